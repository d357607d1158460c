"""router/relay/commitment_results.py: storage commitment results a requester did not take,
kept on the spool and sent again by whichever acceptor holds each one's lock."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import zmq

from router.core.config import parse_config
from router.core.messages import RelayRequest, RelayResponse
from router.relay.commitment_results import (
    COUNT_SECONDS,
    FIRST_RETRY_SECONDS,
    GIVE_UP_SECONDS,
    MAX_RETRY_SECONDS,
    KeptResult,
    KeptResults,
    kept_result,
)
from router.relay.result_courier import ResultCourier

UID = "1.2.826.0.1.3680043.8.498.1"
NOW = 1_000_000.0


def report(uid: str = UID) -> KeptResult:
    request = RelayRequest(
        request_id="r1", command="N-EVENT-REPORT", upstreams=["CT1"], calling_ae="ORTHANC",
        called_ae="DICOM-ROUTER", peer_address="127.0.0.1",
        sop_class_uid="1.2.840.10008.1.20.1", transfer_syntax_uid="1.2.840.10008.1.2",
        sop_instance_uid="1.2.840.10008.1.20.1.1", event_type_id=2, has_dataset=True,
        to_known_ae=True)
    return kept_result(request, uid, "CT1", b"\x08\x00\x95\x11", NOW, "cannot connect")


def test_a_kept_result_survives_a_restart_and_is_sent_as_it_came(tmp_path: Path) -> None:
    assert KeptResults(tmp_path).keep(report())
    after_restart = KeptResults(tmp_path)
    assert list(after_restart.due(NOW)) == []  # its first retry is not due yet
    (due,) = after_restart.due(NOW + FIRST_RETRY_SECONDS)
    request = due.request("r2")
    assert (request.command, request.upstreams, request.to_known_ae) == \
        ("N-EVENT-REPORT", ["CT1"], True)
    assert (request.event_type_id, request.sop_instance_uid) == (2, "1.2.840.10008.1.20.1.1")
    assert due.payload() == b"\x08\x00\x95\x11"
    assert due.reason == "cannot connect"


def test_retries_back_off_to_a_ceiling_and_give_up_after_a_day() -> None:
    kept = report()
    delays = []
    for _ in range(12):
        before = kept.next_at
        kept = kept.failed(before, "refused")
        delays.append(kept.next_at - before)
    assert delays[0] == 2 * FIRST_RETRY_SECONDS and delays[-1] == MAX_RETRY_SECONDS
    assert delays == sorted(delays)
    assert not kept.expired(NOW + GIVE_UP_SECONDS - 1) and kept.expired(NOW + GIVE_UP_SECONDS)


def test_delivered_or_given_up_it_is_gone(tmp_path: Path) -> None:
    results = KeptResults(tmp_path)
    results.keep(report())
    for due in results.due(NOW + FIRST_RETRY_SECONDS):
        results.delivered(due)
    assert list(tmp_path.iterdir()) == []


def test_a_retry_later_is_due_only_then(tmp_path: Path) -> None:
    results = KeptResults(tmp_path)
    results.keep(report())
    for due in results.due(NOW + FIRST_RETRY_SECONDS):
        results.retry_later(due.failed(NOW + FIRST_RETRY_SECONDS, "silent"))
    assert list(results.due(NOW + FIRST_RETRY_SECONDS + 1)) == []
    (again,) = results.due(NOW + 100)
    assert (again.attempts, again.reason) == (2, "silent")


def test_one_acceptor_at_a_time_sends_a_result(tmp_path: Path) -> None:
    """Another acceptor (another open file, another flock) skips the one being sent."""
    first, second = KeptResults(tmp_path), KeptResults(tmp_path)
    first.keep(report())
    for _ in first.due(NOW + FIRST_RETRY_SECONDS):
        assert list(second.due(NOW + FIRST_RETRY_SECONDS)) == []
    assert len(list(second.due(NOW + FIRST_RETRY_SECONDS))) == 1


def test_a_transaction_uid_that_cannot_be_a_file_name_is_not_kept(tmp_path: Path) -> None:
    assert not KeptResults(tmp_path).keep(report("1.2.3/../../x"))
    assert list(tmp_path.iterdir()) == []


def test_the_kept_results_are_counted_and_pending_commitments_are_not(tmp_path: Path) -> None:
    results = KeptResults(tmp_path)
    assert results.count() == 0
    results.keep(report())
    results.keep(report("1.2.826.0.1.3680043.8.498.2"))
    (tmp_path / "1.2.826.0.1.3680043.8.498.3.json").write_text("{}")  # pending, no result
    assert results.count() == 2
    assert KeptResults(tmp_path / "absent").count() == 0


def test_an_unreadable_result_is_set_aside_and_the_others_are_still_sent(
        tmp_path: Path) -> None:
    """A damaged file (not UTF-8, or a field of the wrong type) raised out of `due`: every
    result sorted after it was never sent again, and the retry thread logged the same
    exception every second (a RuntimeError from the context manager, for the latter)."""
    results = KeptResults(tmp_path)
    results.keep(report())
    (tmp_path / "1.1.result").write_bytes(b"\xff\xfe{")
    damaged = {**asdict(report()), "transaction_uid": "1.2", "next_at": None}
    (tmp_path / "1.2.result").write_text(json.dumps(damaged))
    assert [r.transaction_uid for r in results.due(NOW + FIRST_RETRY_SECONDS)] == [UID]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{UID}.result"]


def test_a_result_kept_while_its_first_try_waits_is_not_sent_before_that_try_ends(
        tmp_path: Path) -> None:
    """A requester slow to answer its first try (past the 5 s the upstream waits) got the
    result twice: the courier sent the kept copy 2 s later while the first try still ran."""
    results = KeptResults(tmp_path)
    kept = kept_result(report().request("r1"), UID, "CT1", b"\x08\x00", NOW,
                       "no answer within 5s", first_try_until=NOW + 120)
    results.keep(kept)
    assert list(results.due(NOW + 60)) == []  # past next_at, the first try still waits
    results.first_try_ended(kept, True, NOW + 7, "")
    assert list(tmp_path.iterdir()) == []  # taken on the first try: never sent again


def test_a_first_try_that_ends_untaken_makes_its_result_due_and_one_cut_short_expires(
        tmp_path: Path) -> None:
    results = KeptResults(tmp_path)
    kept = kept_result(report().request("r1"), UID, "CT1", b"\x08\x00", NOW,
                       "no answer within 5s", first_try_until=NOW + 120)
    results.keep(kept)
    (late,) = results.due(NOW + 120)  # its acceptor died mid-try: sent all the same
    assert late.same(kept)
    results.first_try_ended(kept, False, NOW + 30, "MODALITY answered 0xA700")
    assert list(results.due(NOW + 30)) == []
    (due,) = results.due(NOW + 30 + FIRST_RETRY_SECONDS)
    assert (due.reason, due.first_try_until) == ("MODALITY answered 0xA700", 0.0)


def _later(body: bytes, at: float) -> KeptResult:
    return replace(report(), dataset=base64.b64encode(body).decode(), kept_at=at)


@pytest.mark.parametrize("older_ends", ["delivered", "retry_later"])
def test_a_later_result_written_while_the_earlier_is_sent_is_kept(
        tmp_path: Path, older_ends: str) -> None:
    """Another acceptor kept a later report while the courier sent the earlier one: the
    courier's end then removed the later (delivered) or wrote the earlier over it (a retry).
    The later now waits for the earlier's lock, and is what stays."""
    courier, acceptor = KeptResults(tmp_path), KeptResults(tmp_path)
    courier.keep(_later(b"partial", NOW))
    for earlier in courier.due(NOW + FIRST_RETRY_SECONDS):
        writer = threading.Thread(target=acceptor.keep, args=(_later(b"final", NOW + 1),))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive()  # waits for the courier: the earlier is not replaced mid-send
        if older_ends == "delivered":
            courier.delivered(earlier)
        else:
            courier.retry_later(earlier.failed(NOW + FIRST_RETRY_SECONDS, "refused"))
    writer.join(10)
    (left,) = KeptResults(tmp_path).due(NOW + 1000)
    assert left.payload() == b"final"


def test_a_later_result_waits_for_the_earliers_first_try_and_then_goes(tmp_path: Path) -> None:
    """Never the earlier after the later: while the earlier's first try may still reach the
    requester, the later is not sent; once that try ends (taken or not), it is."""
    results = KeptResults(tmp_path)
    earlier = replace(_later(b"partial", NOW), first_try_until=NOW + 120)
    results.keep(earlier)
    results.keep(replace(_later(b"final", NOW + 1), next_at=NOW + 1))
    assert list(results.due(NOW + 60)) == []
    results.first_try_ended(earlier, True, NOW + 7, "")
    (later,) = results.due(NOW + 7)
    assert later.payload() == b"final"


def test_the_supervisor_lists_the_folder_every_few_seconds_not_every_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's main loop (every half second) listed commitments/ on each turn: on a
    shared NFS folder a round trip to the server twice a second, per cell."""
    results = KeptResults(tmp_path)
    listings = []
    count = results.count
    monkeypatch.setattr(results, "count", lambda: listings.append(1) or count())
    results.keep(report())
    assert results.counted(0.0) == 1
    results.keep(report("1.2.826.0.1.3680043.8.498.2"))
    turns = [results.counted(turn * 0.5) for turn in range(1, int(4 * COUNT_SECONDS))]
    assert turns[0] == 1  # as last listed, for at most COUNT_SECONDS
    assert turns[-1] == 2
    assert len(listings) == 2  # two listings in 2 * COUNT_SECONDS of half-second turns


def test_a_leased_result_is_sent_by_one_acceptor_and_due_again_when_not_taken(
        tmp_path: Path) -> None:
    """The courier sends a result without its lock, under a lease in the file: no other
    acceptor sends it before the lease ends, and an untaken send backs off."""
    first, second = KeptResults(tmp_path), KeptResults(tmp_path)
    first.keep(report())
    now = NOW + FIRST_RETRY_SECONDS
    with contextlib.closing(first.due(now)) as due:
        leased = first.lease(next(due), now + 121)
    assert list(second.due(now + 120)) == []  # the send may still be waiting
    first.sent(leased, False, now + 5, "silent")
    (again,) = second.due(now + 5 + 2 * FIRST_RETRY_SECONDS)
    assert (again.attempts, again.reason, again.first_try_until) == (2, "silent", 0.0)
    with contextlib.closing(second.due(now + 1000)) as due:
        leased = second.lease(next(due), now + 1121)
    second.sent(leased, True, now + 1001, "")
    assert list(tmp_path.iterdir()) == []


def test_a_silent_requester_is_tried_once_a_pass_not_once_per_result(tmp_path: Path) -> None:
    """Regression: the courier sent every due result in turn, and each try to a requester
    that never answers lasts up to request_timeout: three results kept for a silent CT1
    held CT2's back three timeouts a pass (twenty, twenty). Now CT1 is tried once a pass,
    its other results wait for the next, and CT2's goes in the same pass."""
    config = parse_config({
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": 9}},
        "known_aes": {"CT1": {"host": "127.0.0.1", "port": 9},
                      "CT2": {"host": "127.0.0.1", "port": 9}},
        "rules": [{"name": "archive", "forward": ["pacs"]}]})
    results = KeptResults(tmp_path)
    past = time.time() - 60
    for n, requester in enumerate(["CT1", "CT1", "CT1", "CT2"]):
        results.keep(replace(report(f"1.2.3.{n}"), requester_ae=requester, kept_at=past,
                             next_at=past))
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    courier = ResultCourier(lambda: config, context, "inproc://unused", results)
    tried: list[str] = []

    def deliver(request: RelayRequest, payload: bytes) -> Any:
        tried.append(request.upstreams[0])
        if request.upstreams[0] == "CT1":
            return None, None, "no answer within 120s"  # silent for the whole timeout
        return RelayResponse(request.request_id, 0x0000, final=True, upstream="CT2"), None, ""

    courier.deliver = deliver  # type: ignore[method-assign]
    try:
        courier.retry_due()
    finally:
        context.term()
    assert sorted(tried) == ["CT1", "CT2"]
    left = {(r.transaction_uid, r.attempts) for r in results.due(time.time() + 3600)}
    assert left == {("1.2.3.0", 2), ("1.2.3.1", 1), ("1.2.3.2", 1)}  # CT2's delivered
