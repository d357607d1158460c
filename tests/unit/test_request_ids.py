"""router/relay/request_ids.py: which relayed request a C-CANCEL names."""

from __future__ import annotations

from router.relay.request_ids import RequestIds


def test_a_cancel_counts_for_its_request_only_until_it_ends() -> None:
    ids = RequestIds()
    ids.cancel(1)  # no such request: ignored
    ids.submitted(1)
    assert not ids.cancelled(1)
    ids.cancel(1)
    assert ids.cancelled(1)
    ids.finished(1)
    ids.submitted(1)  # the next request reuses the ID
    assert not ids.cancelled(1)
    ids.finished(1)
    ids.cancel(1)  # late, after the request ended
    ids.submitted(1)
    assert not ids.cancelled(1)


def test_the_association_is_idle_only_once_every_relayed_request_ended() -> None:
    """The connection's network_timeout counts from `idle_since`, never while one waits."""
    ids = RequestIds()
    assert ids.idle_since() is not None
    ids.submitted(1)
    ids.submitted(2)
    assert ids.idle_since() is None
    ids.finished(1)
    assert ids.idle_since() is None
    ids.finished(2)
    assert ids.idle_since() is not None


def test_a_cancel_does_not_reach_the_next_request_that_arrives_before_its_own_ends() -> None:
    """The relay sends a request's final response, then marks it finished: in between, a
    requester that reuses the ID (pynetdicom: always 1) can send its next request, which the
    old cancel then ended at once with 0xFE00 and nothing sent (seen in a test run)."""
    ids = RequestIds()
    ids.submitted(1)
    ids.cancel(1)
    ids.submitted(1)  # the next C-GET, before the cancelled one is marked finished
    assert ids.cancelled(1)  # the one being served still is
    ids.finished(1)
    assert not ids.cancelled(1)
    ids.cancel(1)
    assert ids.cancelled(1)
    ids.finished(1)
    assert not ids.cancelled(1) and ids.idle_since() is not None
