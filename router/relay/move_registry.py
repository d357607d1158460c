"""The relayed C-MOVEs in progress, seen by every acceptor process.

The router asks the upstream to move to the router's own AE with a message ID of its own;
the upstream's C-STOREs carry that ID as Move Originator Message ID (and the router's calling
AE as Move Originator AE title), which is how an instance finds its move. The upstream opens
associations of its own for them, and with several acceptors on one port
(`listen.acceptors`) the kernel may hand such an association to an acceptor other than the
one whose requester waits. So a move is a file, `<spool>/moves/<message id>`, holding the
pid of the acceptor that relays it and the calling AE it presents upstream:

- made by `link(2)` of a written file, which fails when the name exists, so the message ID
  is unique among the moves of every acceptor and nobody reads a half-written entry;
- whichever acceptor receives an instance of it puts it into relay/ under the owner's pid
  (`relayed_move_name`), where the owner's move loop picks it up;
- an entry whose acceptor died is a move that is over: it matches no instance and its ID is
  taken again.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from router.core.owned_names import process_alive

MESSAGE_IDS = 65535  # a message ID is a US; 0 is not used


@dataclass(frozen=True)
class MoveRelay:
    message_id: int
    originator_ae: str  # the calling AE the router presents to the upstream


class MoveRegistry:
    def __init__(self, folder: Path, alive: Callable[[int], bool] = process_alive,
                 message_ids: int = MESSAGE_IDS) -> None:
        self.folder = folder
        self._alive = alive
        self._ids = message_ids  # fewer in tests, to run out of them
        folder.mkdir(parents=True, exist_ok=True)
        # Acceptors start at different IDs, so that they seldom try the same one.
        self._next = random.randrange(message_ids)

    def open(self, originator_ae: str) -> MoveRelay:
        """Claim a message ID no move in progress has, in any acceptor."""
        draft = self.folder / f".{os.getpid()}-{uuid.uuid4().hex}"
        draft.write_text(f"{os.getpid()} {originator_ae}")
        try:
            for _ in range(self._ids):
                message_id = self._next % self._ids + 1
                self._next += 1
                entry = self.folder / str(message_id)
                try:
                    os.link(draft, entry)
                except FileExistsError:
                    if self._owner(message_id) is not None:
                        continue
                    # Left by an acceptor that died: that move is over. Take the ID.
                    entry.unlink(missing_ok=True)
                    try:
                        os.link(draft, entry)
                    except FileExistsError:
                        continue  # another acceptor took it meanwhile
                return MoveRelay(message_id, originator_ae)
            raise RuntimeError(f"{self._ids} relayed C-MOVEs in progress")
        finally:
            draft.unlink(missing_ok=True)

    def close(self, move: MoveRelay) -> None:
        (self.folder / str(move.message_id)).unlink(missing_ok=True)

    def owner(self, message_id: int | None, originator_ae: str | None) -> int | None:
        """The pid of the acceptor relaying the move an instance names, None when it names no
        move in progress (AE titles arrive padded)."""
        if message_id is None or not 1 <= int(message_id) <= MESSAGE_IDS:
            return None
        entry = self._entry(int(message_id))
        if entry is None or entry[1] != (originator_ae or "").strip():
            return None
        return entry[0] if self._alive(entry[0]) else None

    def _owner(self, message_id: int) -> int | None:
        entry = self._entry(message_id)
        return entry[0] if entry is not None and self._alive(entry[0]) else None

    def _entry(self, message_id: int) -> tuple[int, str] | None:
        with contextlib.suppress(OSError, ValueError):
            pid, _, originator_ae = (self.folder / str(message_id)).read_text().partition(" ")
            return int(pid), originator_ae
        return None
