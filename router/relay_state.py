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
import queue
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
    at: float


class Commitments:
    def __init__(self) -> None:
        self._pending: dict[str, Commitment] = {}
        self._lock = threading.Lock()

    def remember(self, transaction_uid: str, requester_ae: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._pending = {uid: c for uid, c in self._pending.items()
                             if now - c.at < COMMITMENT_MEMORY_SECONDS}
            self._pending[transaction_uid] = Commitment(requester_ae, now)

    def take(self, transaction_uid: str) -> Commitment | None:
        with self._lock:
            return self._pending.pop(transaction_uid, None)
