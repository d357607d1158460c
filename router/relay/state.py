"""What the acceptor remembers about relays in progress, shared by its association threads.

- Relayed C-MOVEs: the router asks the upstream to move to the router's own AE with a
  message ID unique among the moves in progress; the upstream's C-STOREs carry that ID as
  Move Originator Message ID (and the router's calling AE as Move Originator AE title), which
  is how an instance finds its move. Concurrent moves never share an ID, so they never mix.
- Storage commitment: the Transaction UID of each N-ACTION relayed, with the AE title of the
  requester, so that the upstream's N-EVENT-REPORT (usually on a new association to the
  router) is delivered to the right requester.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

COMMITMENT_MEMORY_SECONDS = 24 * 3600.0  # a storage commitment result may come hours later


@dataclass
class MoveRelay:
    message_id: int
    originator_ae: str  # the calling AE the router presents to the upstream
    arrived: queue.Queue[tuple[Path, str, str, str]] = field(default_factory=queue.Queue)


class MoveRelays:
    def __init__(self) -> None:
        self._moves: dict[int, MoveRelay] = {}
        self._lock = threading.Lock()
        self._ids = itertools.cycle(range(1, 65536))

    def open(self, originator_ae: str) -> MoveRelay:
        with self._lock:
            if len(self._moves) >= 65535:
                raise RuntimeError("65535 relayed C-MOVEs in progress")
            while (message_id := next(self._ids)) in self._moves:
                pass
            move = MoveRelay(message_id, originator_ae)
            self._moves[message_id] = move
            return move

    def close(self, move: MoveRelay) -> None:
        with self._lock:
            self._moves.pop(move.message_id, None)

    def find(self, message_id: int | None, originator_ae: str | None) -> MoveRelay | None:
        if message_id is None:
            return None
        with self._lock:
            move = self._moves.get(int(message_id))
        if move is None or (originator_ae or "").strip() != move.originator_ae:
            return None
        return move


@dataclass(frozen=True)
class Commitment:
    requester_ae: str
    at: float  # wall-clock time it was relayed


class Commitments:
    """Pending storage commitments by Transaction UID, kept on the spool volume
    (`<spool>/commitments/<uid>.json`) so that a result arriving after a restart of the
    acceptor still finds its requester. Without a folder they live in memory only."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._pending: dict[str, Commitment] = {}
        self._lock = threading.Lock()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self._load(folder)

    def _load(self, folder: Path) -> None:
        for path in folder.glob("*.json"):
            try:
                body = json.loads(path.read_text())
                self._pending[path.stem] = Commitment(str(body["requester_ae"]),
                                                      float(body["at"]))
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # unreadable: it can never be matched anyway

    def _path(self, transaction_uid: str) -> Path | None:
        if self.folder is None or not re.fullmatch(r"[0-9.]{1,64}", transaction_uid):
            return None  # a hostile "UID" never becomes a file name
        return self.folder / f"{transaction_uid}.json"

    def remember(self, transaction_uid: str, requester_ae: str) -> None:
        now = time.time()
        commitment = Commitment(requester_ae, now)
        with self._lock:
            for uid in [u for u, c in self._pending.items()
                        if now - c.at >= COMMITMENT_MEMORY_SECONDS]:
                self._forget(uid)
            self._pending[transaction_uid] = commitment
        path = self._path(transaction_uid)
        if path is not None:
            temp = path.with_suffix(".tmp")
            temp.write_text(json.dumps({"requester_ae": requester_ae, "at": now}))
            os.replace(temp, path)

    def _forget(self, transaction_uid: str) -> None:
        self._pending.pop(transaction_uid, None)
        path = self._path(transaction_uid)
        if path is not None:
            path.unlink(missing_ok=True)

    def take(self, transaction_uid: str) -> Commitment | None:
        with self._lock:
            commitment = self._pending.get(transaction_uid)
            if commitment is not None:
                self._forget(transaction_uid)
            return commitment

    def restore(self, transaction_uid: str, commitment: Commitment) -> None:
        """A result that could not be delivered: wait for the upstream's retry."""
        self.remember(transaction_uid, commitment.requester_ae)
