"""Who relays a C-MOVE, and whether it still does, when the cells behind a load balancer
share the move registry (spool.shared_state_dir, docs/scale-out.md).

Within one cell a move's owner is an acceptor's ProcessTag, and the tag says whether that
process still runs (router/core/process_identity.py). Another cell's tag says nothing here:
its pids and boot are another host's or pod's, and reading them in this PID namespace could
find a live process of ours, or none. So with a shared folder an owner is `<tag>@<cell>`, the
cell being a random id kept in the cell's spool (`<spool>/cell-id`: the same for each of its
acceptors and across its restarts, and never another cell's, since each cell has a spool of
its own). A cell judges its own owners by their tags, as before; another cell's by their
heartbeat: each acceptor of a sharing cell touches `alive-<owner>` in the shared moves/
every HEARTBEAT_SECONDS from its main loop (which no delivery blocks), and an owner of another
cell whose heartbeat is missing or older than FOREIGN_SILENCE_SECONDS is gone. So the entries
of a cell that died with moves open expire that long after its last beat, whoever looks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from router.core.durable_files import fsync_path, write_atomically
from router.core.owned_names import process_alive
from router.core.process_identity import ProcessTag, own_tag, parse_tag

CELL_FILE = "cell-id"
CELL_DIGITS = 12  # hex
HEARTBEAT_SECONDS = 10.0
# Above the beat, an NFS client's attribute cache (acregmax, 60 s by default) and a host
# too busy to beat for a while: another cell's move is never taken for dead while it runs.
FOREIGN_SILENCE_SECONDS = 120.0
HEARTBEAT_PREFIX = "alive-"


@dataclass(frozen=True)
class MoveOwner:
    tag: ProcessTag
    cell: str | None = None  # None: a cell that shares no state (or an older router's entry)

    def __str__(self) -> str:
        return str(self.tag) if self.cell is None else f"{self.tag}@{self.cell}"


def parse_owner(text: str) -> MoveOwner | None:
    """The owner a registry entry or a shared file name starts with (MoveOwner's str), None
    for text no router made so."""
    tag_text, at, cell = text.partition("@")
    tag = parse_tag(tag_text)
    if tag is None or (at and not is_cell(cell)):
        return None
    return MoveOwner(tag, cell if at else None)


def is_cell(text: str) -> bool:
    return len(text) == CELL_DIGITS and all(c in "0123456789abcdef" for c in text)


def cell_id(spool_root: Path) -> str:
    """This cell's id. The supervisor makes it at start, before any acceptor reads it
    (make_cell_id); made by link(2) all the same, so that racing makers read one id."""
    text = _read_cell(spool_root / CELL_FILE)
    return text if text is not None else make_cell_id(spool_root)


def make_cell_id(spool_root: Path) -> str:
    """This cell's id, made when the spool has none, or a damaged one (a power cut before
    its data reached the disk): a new id then, since nothing else names it but moves that
    ended with the run that had it. OSError when the spool cannot be written."""
    path = spool_root / CELL_FILE
    known = _read_cell(path)
    if known is not None:
        return known
    draft = spool_root / f".{CELL_FILE}.{secrets.token_hex(4)}"
    try:
        write_atomically(draft, secrets.token_hex(CELL_DIGITS // 2).encode())
        try:
            os.link(draft, path)
        except FileExistsError:
            if _read_cell(path) is None:
                os.replace(draft, path)  # damaged: this one instead
        fsync_path(spool_root, directory=True)
    finally:
        draft.unlink(missing_ok=True)
    made = _read_cell(path)
    if made is None:
        raise OSError(f"{path} holds no cell id")
    return made


def _read_cell(path: Path) -> str | None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = path.read_text().strip()
        if is_cell(text):
            return text
    return None


class OwnerLiveness:
    """Whether a move's owner still relays it: its process (this cell's), or its heartbeat
    (another cell's)."""

    def __init__(self, folder: Path, cell: str | None,
                 alive: Callable[[ProcessTag], bool] = process_alive,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.cell = cell
        self._alive = alive
        self._clock = clock
        self._beaten = -HEARTBEAT_SECONDS  # monotonic

    def me(self) -> MoveOwner:
        return MoveOwner(own_tag(), self.cell)

    def __call__(self, owner: MoveOwner) -> bool:
        if owner.cell is None or owner.cell == self.cell:
            return self._alive(owner.tag)
        return self.silence(owner) < FOREIGN_SILENCE_SECONDS

    def silence(self, owner: MoveOwner) -> float:
        """Seconds since another cell's owner last beat (infinite: never, or swept)."""
        try:
            return self._clock() - (self.folder / f"{HEARTBEAT_PREFIX}{owner}").stat().st_mtime
        except OSError:
            return float("inf")

    def beat(self) -> None:
        """Say this acceptor still runs, to the other cells, once per HEARTBEAT_SECONDS."""
        now = time.monotonic()
        if self.cell is None or now - self._beaten < HEARTBEAT_SECONDS:
            return
        self._beaten = now
        with contextlib.suppress(OSError):  # the volume gone for now: the next beat tries
            (self.folder / f"{HEARTBEAT_PREFIX}{self.me()}").touch()

    def sweep(self) -> None:
        """Remove the heartbeats of owners that are gone (an acceptor that stopped, a cell
        that died): they would only grow the folder."""
        for path in self.folder.glob(f"{HEARTBEAT_PREFIX}*"):
            owner = parse_owner(path.name[len(HEARTBEAT_PREFIX):])
            if owner is not None and not self(owner):
                path.unlink(missing_ok=True)
