"""The message IDs of one association's relayed requests, for C-CANCEL (PS3.7 9.3.2.3).

A C-CANCEL names the request it cancels by its Message ID. It counts for a request that was
submitted and has not finished, whether it is being served or still waits its turn; a
C-CANCEL for no such request is ignored. Once a request finished, its ID is free again:
requesters reuse IDs (pynetdicom sends every C-FIND, C-GET and C-MOVE with ID 1), and an
earlier request's cancel must not end a later one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter


class RequestIds:
    def __init__(self) -> None:
        self._outstanding: Counter[int] = Counter()  # submitted, not finished
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()  # the connection's thread and the relay's
        self._idle_since = time.monotonic()  # when the last outstanding request finished

    def submitted(self, message_id: int) -> None:
        with self._lock:
            self._outstanding[message_id] += 1

    def cancel(self, message_id: int) -> None:
        with self._lock:
            if self._outstanding[message_id] > 0:
                self._cancelled.add(message_id)

    def cancelled(self, message_id: int) -> bool:
        with self._lock:
            return message_id in self._cancelled

    def finished(self, message_id: int) -> None:
        with self._lock:
            self._outstanding[message_id] -= 1
            if self._outstanding[message_id] <= 0:
                del self._outstanding[message_id]
                self._cancelled.discard(message_id)
            if not self._outstanding:
                self._idle_since = time.monotonic()

    def idle_since(self) -> float | None:
        """When the association last had no relayed request outstanding (monotonic), None
        while it has one: its requester is waiting for the router, not silent."""
        with self._lock:
            return None if self._outstanding else self._idle_since
