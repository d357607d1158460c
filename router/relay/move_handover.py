"""Instances one cell receives for a C-MOVE another cell relays (spool.shared_state_dir).

The upstream sends a relayed move's instances on associations of its own to the router's
address, and behind a load balancer any cell may get them. The cell that does finds the
move in the shared registry (move_registry.py) and, when another cell owns it, puts the
instance here, `<shared>/move-instances/<owner>-move-<id>-<random>.dcm`, where the owner's
move loop reads it as it reads its own relay/: copied (the shared volume is most likely
another filesystem than the spool), fsync'd and renamed, the folder fsync'd, all before
the upstream hears Success, so the instance outlives the receiving cell. An instance whose
move is no longer in progress (it ended while the instance was copied, or its owner is gone:
move_owner.py) is swept a minute later, and so is a copy a crash cut short.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from router.core.durable_files import fsync_path
from router.core.errors import OutOfResources
from router.core.owned_names import relayed_move_name
from router.relay.move_owner import MoveOwner, parse_owner

log = logging.getLogger(__name__)

DRAFT_SECONDS = 3600.0  # a half-copied instance older than this was a crash's
# An instance of a move that ended is left this long: its owner's own clearing comes first.
ORPHAN_SECONDS = 60.0


class HandedInstances:
    def __init__(self, folder: Path, relays: Callable[[MoveOwner, int], bool]) -> None:
        """`relays(owner, message_id)`: whether that owner's move is still in progress."""
        self.folder = folder
        self._relays = relays
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, source: Path, owner: MoveOwner, message_id: int) -> None:
        """Hand a received instance to its move's cell, durably; OutOfResources (the
        upstream may send it again) when the shared volume does not take it."""
        target = self.folder / relayed_move_name(str(owner), message_id)
        draft = self.folder / f".{uuid.uuid4().hex}.tmp"  # no owner's prefix: never read
        try:
            shutil.copyfile(source, draft)
            fsync_path(draft)
            os.replace(draft, target)
            fsync_path(self.folder, directory=True)
        except OSError as exc:
            draft.unlink(missing_ok=True)
            log.warning("cannot hand an instance of relayed C-MOVE %d to its cell through "
                        "%s: %s", message_id, self.folder, exc.strerror or exc)
            raise OutOfResources("the shared state folder does not take the instance; "
                                 "retry later") from None
        source.unlink(missing_ok=True)

    def files(self, owner: MoveOwner, message_id: int) -> list[Path]:
        """The instances handed to this owner's move; none while the shared volume is away
        (the move's next look finds them, and a move that ended meanwhile counts them
        failed): its own instances still go, and its end is no traceback."""
        prefix = f"{owner}-move-{message_id}-"
        try:
            with os.scandir(self.folder) as entries:
                return [Path(e.path) for e in entries if e.name.startswith(prefix)]
        except OSError:
            return []

    def sweep(self) -> int:
        """Remove what nobody will read: instances of moves no longer in progress, drafts a
        crash left. How many. The upstream heard Success for such an instance: say so."""
        removed, moves = 0, collections.Counter[str]()
        now = time.time()
        with os.scandir(self.folder) as entries:
            for entry in list(entries):
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > self._keep(entry.name):
                        os.unlink(entry.path)
                        removed += 1
                        if not entry.name.startswith("."):  # an instance, not a draft
                            moves[entry.name.partition("-move-")[2].partition("-")[0]] += 1
        if moves:
            log.warning("removed %d instance(s) handed over for relayed C-MOVE(s) %s, which "
                        "ended or whose cell stopped before delivering them: never delivered "
                        "for the move", sum(moves.values()), ", ".join(sorted(moves)))
        return removed

    def _keep(self, name: str) -> float:
        """How long a file of this name may stay: forever while its move is in progress."""
        owner_text, _, rest = name.partition("-move-")
        owner = parse_owner(owner_text)
        message_id = rest.partition("-")[0]
        if owner is None or not message_id.isdigit():
            return DRAFT_SECONDS
        return float("inf") if self._relays(owner, int(message_id)) else ORPHAN_SECONDS
