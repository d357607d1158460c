"""Counts of connections that have not finished their association request (router.pending)."""

from __future__ import annotations

from router.dicom.pending import PendingConnections, Ticket


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
