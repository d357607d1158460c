"""Connections that have not finished their association request yet, counted per source.

Before its A-ASSOCIATE-RQ is in, a connection has proved nothing: no AE title, no identity,
maybe not even DICOM. It still costs three threads (connection, association, DUL) until the
request deadline. These counts bound that cost: at most `per_source` such connections from
one address and `total` from everyone; more are closed at accept, in the accept loop,
before any thread is started for them. A connection leaves the count once its request has
been read and decoded, or when it ends, whichever comes first.

An IPv6 source counts by its /64, the block one host or site is given: one machine can
take any address in it. When the total is reached, the accept loop makes room for a
source holding fewer pending connections than the heaviest one by closing that one's
oldest (router/acceptor/server.py), so addresses that fill the table cannot lock others out.
"""

from __future__ import annotations

import ipaddress
import threading

from router.core.shared_counts import SharedCounts


def source_of(address: str) -> str:
    """The key an address is counted under: itself, its IPv4 address when IPv4-mapped, or
    its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


class Ticket:
    """One connection's place in the count; `release()` may be called any number of times."""

    def __init__(self, owner: PendingConnections, source: str) -> None:
        self._owner = owner
        self.source = source
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        self._owner._release(self)


class PendingConnections:
    """The counts are `counts` (shared by every acceptor, router/core/shared_counts.py) in
    this acceptor's `column`, or private ones."""

    def __init__(self, per_source: int, total: int, counts: SharedCounts | None = None,
                 column: int = 0) -> None:
        self.per_source = per_source
        self.total = total
        self._counts = counts if counts is not None else SharedCounts(2 * total, 1)
        self._column = column
        self._lock = threading.Lock()

    def reconfigure(self, per_source: int, total: int) -> None:
        with self._lock:
            self.per_source, self.total = per_source, total

    def admit(self, source: str) -> Ticket | str:
        """A ticket, or the reason (a metric label) why this connection is refused."""
        refused = self._counts.try_add(self._column, source.encode(), self.per_source,
                                       self.total)
        if refused is not None:
            return "pending_per_source" if refused == "key" else "pending_total"
        return Ticket(self, source)

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket._released:
                return
            ticket._released = True
        self._counts.remove(self._column, ticket.source.encode())

    def count(self, source: str | None = None) -> int:
        return self._counts.count(None if source is None else source.encode())
