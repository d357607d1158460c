"""Counts of connections that have not finished their association request (router.pending)."""

from __future__ import annotations

import pytest

from router.dicom.pending import PendingConnections, Ticket, source_of


def test_per_source_and_total_caps() -> None:
    pending = PendingConnections(per_source=2, total=3)
    first, second = pending.admit("10.0.0.1"), pending.admit("10.0.0.1")
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    assert pending.admit("10.0.0.1") == "pending_per_source"
    assert isinstance(pending.admit("10.0.0.2"), Ticket)
    assert pending.admit("10.0.0.3") == "pending_total"
    first.release()
    assert isinstance(pending.admit("10.0.0.1"), Ticket)


def test_a_ticket_is_released_once() -> None:
    pending = PendingConnections(per_source=1, total=5)
    ticket = pending.admit("10.0.0.1")
    assert isinstance(ticket, Ticket)
    ticket.release()
    ticket.release()
    assert pending.count() == 0 and pending.count("10.0.0.1") == 0


@pytest.mark.parametrize(("address", "key"), [
    ("10.1.2.3", "10.1.2.3"),
    ("::ffff:10.1.2.3", "10.1.2.3"),  # a dual-stack socket's IPv4 peer
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # one host, any address in it
    ("fe80::1%eth0", "fe80::/64"),
    ("?", "?"),
])
def test_an_ipv6_source_counts_by_its_64(address: str, key: str) -> None:
    assert source_of(address) == key
