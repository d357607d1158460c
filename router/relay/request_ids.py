"""The message IDs of one association's relayed requests, for C-CANCEL (PS3.7 9.3.2.3).

A C-CANCEL names the request it cancels by its Message ID. It counts for a request that was
submitted and has not finished, whether it is being served or still waits its turn; a
C-CANCEL for no such request is ignored. Once a request finished, its ID is free again:
requesters reuse IDs (pynetdicom sends every C-FIND, C-GET and C-MOVE with ID 1), and an
earlier request's cancel must not end a later one.
"""

from __future__ import annotations

import collections
import threading
import time


class RequestIds:
    """Requests are served one at a time in arrival order, so the oldest outstanding one of
    an ID is the one being served. A C-CANCEL covers the requests of its ID outstanding when
    it came, not one submitted after it: the next request reusing the ID can arrive (its
    predecessor's final response sent) before that predecessor is marked finished."""

    def __init__(self) -> None:
        self._outstanding: dict[int, collections.deque[int]] = {}  # ID -> submissions
        self._cancelled_upto: dict[int, int] = {}  # ID -> newest submission a cancel covers
        self._submissions = 0
        self._lock = threading.Lock()  # the connection's thread and the relay's
        self._idle_since = time.monotonic()  # when the last outstanding request finished

    def submitted(self, message_id: int) -> None:
        with self._lock:
            self._submissions += 1
            self._outstanding.setdefault(message_id, collections.deque()).append(
                self._submissions)

    def cancel(self, message_id: int) -> None:
        with self._lock:
            if waiting := self._outstanding.get(message_id):
                self._cancelled_upto[message_id] = waiting[-1]

    def cancelled(self, message_id: int) -> bool:
        """Whether the request of this ID being served was cancelled."""
        with self._lock:
            waiting = self._outstanding.get(message_id)
            if not waiting:
                return False
            return waiting[0] <= self._cancelled_upto.get(message_id, 0)

    def finished(self, message_id: int) -> None:
        with self._lock:
            waiting = self._outstanding.get(message_id)
            if waiting:
                waiting.popleft()
            if not waiting:
                self._outstanding.pop(message_id, None)
                self._cancelled_upto.pop(message_id, None)
            if not self._outstanding:
                self._idle_since = time.monotonic()

    def idle_since(self) -> float | None:
        """When the association last had no relayed request outstanding (monotonic), None
        while it has one: its requester is waiting for the router, not silent."""
        with self._lock:
            return None if self._outstanding else self._idle_since
