"""Connections that have not finished their association request yet, counted per source.

Before its A-ASSOCIATE-RQ is in, a connection has proved nothing: no AE title, no identity,
maybe not even DICOM. It still costs three threads (connection, association, DUL) until the
request deadline. These counts bound that cost: at most `per_source` such connections from
one address and `total` from everyone; more are closed at accept, in the accept loop,
before any thread is started for them. A connection leaves the count once its request has
been read and decoded, or when it ends, whichever comes first.
"""

from __future__ import annotations

import threading
from collections import Counter


class Ticket:
    """One connection's place in the count; `release()` may be called any number of times."""

    def __init__(self, owner: PendingConnections, source: str) -> None:
        self._owner = owner
        self.source = source
        self._released = False

    def release(self) -> None:
        self._owner._release(self)


class PendingConnections:
    def __init__(self, per_source: int, total: int) -> None:
        self.per_source = per_source
        self.total = total
        self._by_source: Counter[str] = Counter()
        self._count = 0
        self._lock = threading.Lock()

    def reconfigure(self, per_source: int, total: int) -> None:
        with self._lock:
            self.per_source, self.total = per_source, total

    def admit(self, source: str) -> Ticket | str:
        """A ticket, or the reason (a metric label) why this connection is refused."""
        with self._lock:
            if self._by_source[source] >= self.per_source:
                return "pending_per_source"
            if self._count >= self.total:
                return "pending_total"
            self._by_source[source] += 1
            self._count += 1
        return Ticket(self, source)

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket._released:
                return
            ticket._released = True
            self._count -= 1
            self._by_source[ticket.source] -= 1
            if self._by_source[ticket.source] <= 0:
                del self._by_source[ticket.source]

    def count(self, source: str | None = None) -> int:
        with self._lock:
            return self._count if source is None else self._by_source[source]
