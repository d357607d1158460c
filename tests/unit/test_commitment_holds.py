"""Storage commitments held until their instances reached the upstream: the broker's waiting
set (router/broker/commitment_holds.py) against a real Dispatcher's pending instances, its
part in the reply paths (router/broker/relay_paths.py), and what the acceptor asks to wait
for (router/relay/commitment_hold.py)."""

from __future__ import annotations

import logging
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import zmq
from pydicom import filereader
from pydicom.dataset import Dataset
from pydicom.filereader import read_sequence_item
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.dsutils import encode

from router.broker.commitment_holds import CommitmentHolds
from router.broker.deliveries import DestinationPolicy
from router.broker.dispatch import Dispatcher
from router.core.config import RetryConfig, parse_config
from router.core.messages import (
    JobHeader,
    RelayCancel,
    RelayProbe,
    RelayProgress,
    RelayRequest,
    Result,
    decode,
)
from router.core.messages import encode as encode_message
from router.core.rules import AssociationFacts, RuleSet
from router.core.spool import Spool
from router.relay import commitment_hold as acceptor_side
from router.relay.commitment_hold import commitment_hold
from router.relay.server import RelayServer
from router.relay.state import upstream_titles

from .helpers import answer, make_header
from .test_relay_routes import Paths

W1 = b"worker-1"
RETRY = RetryConfig(max_attempts=1, initial_delay=1.0, max_delay=1.0)
ALIVE, DEAD = 4_000_002, 4_000_001


def dispatcher() -> Dispatcher:
    policies = {name: DestinationPolicy(4, RETRY, max_associations=4)  # one job a Deliver
                for name in ("pacs", "other")}
    d = Dispatcher(policies, max_jobs=1000, max_bytes=10**9, rand=lambda: 0.0)
    d.worker_ready(W1, 8, 0.0)
    return d


def instance(job_id: str, destination: str = "pacs") -> JobHeader:
    return make_header(job_id, (destination,), sop_instance_uid=f"1.2.3.{job_id}")


def request(uids: list[str], *, seconds: float = 20.0, request_id: str = f"{ALIVE}-r1",
            destinations: tuple[str, ...] = ("pacs",)) -> RelayRequest:
    return RelayRequest(request_id, "N-ACTION", ["pacs"], "CT1", "ROUTER", "127.0.0.1",
                        "1.2.840.10008.1.20.1", "1.2.840.10008.1.2", hold_seconds=seconds,
                        hold_destinations=list(destinations), hold_instances=uids)


def settle(d: Dispatcher, holds: CommitmentHolds) -> list[Any]:
    left, d.order.left = d.order.left, set()
    return holds.settled(left, d.order.pending)


def test_a_request_waits_until_none_of_its_instances_is_pending_for_its_destination() -> None:
    d, holds = dispatcher(), CommitmentHolds()
    jobs = [instance("1"), instance("2"), instance("3", "other")]
    for job in jobs:
        d.add_job(job)
    held = holds.hold(request(["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.9"]), b"a1", [],
                      d.order.pending, now=0.0)
    assert held is not None and list(held.waiting) == ["1.2.3.1", "1.2.3.2"]  # pacs only
    d.dispatch(0.0)

    answer(d, W1, Result("1", "pacs", True), 1.0)
    assert settle(d, holds) == [] and list(held.waiting) == ["1.2.3.2"]
    answer(d, W1, Result("3", "other", True), 1.0)
    assert settle(d, holds) == []  # another destination's instance: not looked at
    answer(d, W1, Result("2", "pacs", True), 1.0)
    [released] = settle(d, holds)
    assert released.held is held and not released.by_bound and released.pending == 0
    assert len(holds) == 0 and holds.next_due() is None


def test_a_dead_lettered_instance_is_no_longer_pending() -> None:
    d, holds = dispatcher(), CommitmentHolds()
    d.add_job(instance("1"))
    d.dispatch(0.0)
    assert holds.hold(request(["1.2.3.1"]), b"a1", [], d.order.pending, 0.0) is not None
    answer(d, W1, Result("1", "pacs", False, "status", transient=False), 1.0)
    [released] = settle(d, holds)
    assert not released.by_bound


def test_the_bound_releases_it_with_what_is_still_pending() -> None:
    d, holds = dispatcher(), CommitmentHolds()
    for job in (instance("1"), instance("2")):
        d.add_job(job)
    assert holds.hold(request(["1.2.3.1", "1.2.3.2"], seconds=5.0), b"a1", [b"data"],
                      d.order.pending, now=10.0) is not None
    assert holds.next_due() == 15.0
    assert holds.expired(14.9, d.order.pending) == []
    [released] = holds.expired(15.0, d.order.pending)
    assert released.by_bound and released.pending == 2 and released.held.payload == [b"data"]
    assert len(holds) == 0


def test_a_long_study_is_looked_at_about_once_per_instance_as_it_drains() -> None:
    """settled() runs on every broker turn an instance leaves the PACS: looking at all the
    waiting instances each time was 5 million lookups (about 6 s of the broker's loop) for
    10,000 leaving 10 a turn. Out of order, the count at the bound stays exact."""
    uids = [f"1.2.3.{i}" for i in range(2000)]
    in_play = set(uids)
    lookups = []

    def pending(destination: str, uid: str) -> bool:
        lookups.append(uid)
        return uid in in_play

    holds = CommitmentHolds()
    held = holds.hold(request(uids), b"a1", [], pending, now=0.0)
    assert held is not None and len(held.waiting) == 2000
    lookups.clear()
    released = []
    in_play.discard(uids[1500])  # one ahead of its turn: not counted at the bound
    for start in range(0, 1000, 10):
        in_play.difference_update(uids[start:start + 10])
        released += holds.settled({"pacs"}, pending)
    assert released == [] and len(lookups) < 2 * 1000
    [bound] = holds.expired(20.0, pending)
    assert bound.pending == 999
    in_play.clear()
    holds.hold(request(uids, request_id=f"{ALIVE}-r2"), b"a1", [], lambda d, u: True, 0.0)
    lookups.clear()
    [done] = holds.settled({"pacs"}, pending)
    assert not done.by_bound and len(lookups) == 2000


def test_nothing_pending_or_no_bound_is_not_held() -> None:
    d, holds = dispatcher(), CommitmentHolds()
    d.add_job(instance("1"))
    assert holds.hold(request(["1.2.3.7"]), b"a1", [], d.order.pending, 0.0) is None
    assert holds.hold(request(["1.2.3.1"], seconds=0), b"a1", [], d.order.pending, 0.0) is None
    assert holds.hold(request(["1.2.3.1"], destinations=()), b"a1", [], d.order.pending,
                      0.0) is None
    assert len(holds) == 0



def test_the_broker_holds_the_request_answers_no_probe_and_relays_it_once_delivered() -> None:
    d = dispatcher()
    d.add_job(instance("1"))
    d.dispatch(0.0)
    paths = Paths(d)
    paths.on_relay(paths.frontend, b"a1", request(["1.2.3.1"]), [b"dataset"])
    paths.on_relay(paths.frontend, b"a1", RelayProbe(f"{ALIVE}-r1", "N-ACTION"), [])
    assert paths.sent == []  # on its way: no failure for the probe
    answer(d, W1, Result("1", "pacs", True), 1.0)
    paths.release_commitments(1.0)
    [(sock, worker, relayed), told] = paths.sent
    assert (sock, worker) == ("backend", W1)
    assert isinstance(relayed, RelayRequest) and relayed.hold_instances == []
    # The acceptor's wait for the answer (request_timeout) starts now, not after the bound.
    assert told == ("frontend", b"a1", RelayProgress(f"{ALIVE}-r1"))
    assert paths.relays.get(f"{ALIVE}-r1") is not None


def test_a_request_not_held_goes_to_the_worker_without_its_uids() -> None:
    """Nothing pending: relayed at once, without the UIDs the acceptor sent for the hold
    (up to 10,000, about 640 KB of header the worker has no use for)."""
    paths = Paths(dispatcher())
    paths.dispatcher.worker_ready(W1, 4, now=0.0)
    paths.on_relay(paths.frontend, b"a1", request(["1.2.3.1", "1.2.3.2"]), [b"dataset"])
    [(sock, _, relayed), _told] = paths.sent
    assert sock == "backend"
    assert isinstance(relayed, RelayRequest) and relayed.hold_instances == []


def test_a_cancelled_or_orphaned_held_request_is_never_relayed() -> None:
    d = dispatcher()
    d.add_job(instance("1"))
    paths = Paths(d)
    paths.on_relay(paths.frontend, b"a1", request(["1.2.3.1"]), [])
    paths.on_relay(paths.frontend, b"a1", RelayCancel(f"{ALIVE}-r1"), [])
    paths.on_relay(paths.frontend, b"a2", request(["1.2.3.1"], request_id=f"{DEAD}-r2"), [])
    paths.cancel_for_dead_acceptors(lambda writer: writer.pid != DEAD)
    assert len(paths.commitment_holds) == 0
    paths.release_commitments(100.0)
    assert paths.sent == []


def action(uids: list[str]) -> Dataset:
    dataset = Dataset()
    dataset.TransactionUID = "1.2.3.999"
    dataset.ReferencedSOPSequence = [Dataset() for _ in uids]
    for item, uid in zip(dataset.ReferencedSOPSequence, uids, strict=True):
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = uid
    return dataset


def received(uids: list[str], implicit: bool = True, undefined: bool = False) -> bytes:
    """The N-ACTION's dataset as the acceptor receives it (`undefined`: its sequence of
    undefined length, as DCMTK writes it)."""
    dataset = action(uids)
    dataset["ReferencedSOPSequence"].is_undefined_length = undefined
    return bytes(encode(dataset, implicit, True))


def config(**pacs: Any) -> Any:
    dicom = {"type": "dicom", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}
    return parse_config({
        "destinations": {"pacs": {**dicom, **pacs}, "pacs-store": dict(dicom),
                         "elsewhere": {**dicom, "port": 105},
                         "folder": {"type": "folder", "path": "/tmp/x"}},
        "rules": [{"name": "q", "query": ["pacs"]}],
    })


def test_the_acceptor_waits_on_the_upstream_and_the_destinations_at_its_address() -> None:
    hold = commitment_hold(config(), ["pacs"], received(["1.2.3.1", "1.2.3.2"]), True)
    assert hold.seconds == 20.0  # the default
    assert hold.destinations == ["pacs", "pacs-store"]
    assert hold.instances == ["1.2.3.1", "1.2.3.2"]
    assert commitment_hold(config(commitment_hold=0), ["pacs"], received(["1.2.3.1"]),
                           True).seconds == 0


def test_a_long_request_holds_on_its_first_instances(
        monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(acceptor_side, "MAX_HELD_INSTANCES", 3)
    caplog.set_level(logging.INFO, logger=acceptor_side.__name__)
    exactly = commitment_hold(config(), ["pacs"], received([f"1.2.3.{n}" for n in range(3)]),
                              True)
    assert len(exactly.instances) == 3 and "more than" not in caplog.text  # not more
    hold = commitment_hold(config(), ["pacs"], received([f"1.2.3.{n}" for n in range(5)]),
                           True)
    assert hold.instances == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert "with more than 3 instances: only its first 3 are waited for" in caplog.text
    unreadable = received(["1.2.3.1"])[:-7]  # the last item cut short
    assert commitment_hold(config(), ["pacs"], unreadable, True).seconds == 0
    assert "its Referenced SOP Sequence cannot be read" in caplog.text


class GoingLink:
    """A modality's association that goes away once told to (`leave`), after the relay has
    looked at it twice more (so a word the broker sent before was read)."""

    facts = AssociationFacts("CT1", "DICOM-ROUTER", "127.0.0.1")

    def __init__(self) -> None:
        self.looks = 0
        self.leave_after: int | None = None

    def accepted_syntax(self, context_id: int) -> str:
        return str(ImplicitVRLittleEndian)

    def cancelled(self, message_id: int) -> bool:
        return self.gone()

    def gone(self) -> bool:
        self.looks += 1
        return self.leave_after is not None and self.looks >= self.leave_after

    def leave(self) -> None:
        self.leave_after = self.looks + 2

    def send(self, primitive: Any, context_id: int) -> None:
        pass

    def storage_contexts(self) -> list[list[Any]]:
        return []


def relay_server(tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]]) -> RelayServer:
    """A relay server whose broker is `inproc://broker`, relaying CT1's commitments to a
    PACS with the default commitment_hold."""
    config = parse_config({
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": 9}},
        "known_aes": {"CT1": {"host": "127.0.0.1", "port": 9}},
        "rules": [{"name": "archive", "forward": ["pacs"], "query": ["pacs"]}]})
    return RelayServer(config, context, "inproc://broker", RuleSet(config.rules),
                       Spool(tmp_path / "spool").create())


def n_action(dataset: bytes) -> N_ACTION:
    msg = N_ACTION()
    msg.MessageID = 7
    msg.RequestedSOPClassUID = "1.2.840.10008.1.20.1"
    msg.RequestedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
    msg.ActionTypeID = 1
    msg.ActionInformation = BytesIO(dataset)
    return msg


@pytest.mark.parametrize("relayed", [False, True])
def test_a_commitment_dropped_while_held_is_not_left_pending(tmp_path: Path,
                                                             relayed: bool) -> None:
    """The README: an N-ACTION that reaches no upstream is not remembered. One whose
    requester went away while the broker held it was left pending on the spool for 24 hours
    all the same. One the broker had passed on (it says so first) may have reached the
    upstream: it stays pending for its result."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    broker = context.socket(zmq.ROUTER)
    broker.bind("inproc://broker")
    server = relay_server(tmp_path, context)
    link = GoingLink()
    serving = threading.Thread(target=server.serve,
                               args=(link, n_action(received(["1.2.3.1"])), 1))
    serving.start()
    try:
        assert broker.poll(10_000)
        identity, header, *_ = broker.recv_multipart()
        request = decode(header)
        assert isinstance(request, RelayRequest) and request.hold_seconds == 20.0
        assert server.commitments.peek("1.2.3.999") is not None  # remembered first
        if relayed:  # the broker's word when it hands the request to a worker
            broker.send_multipart([identity, encode_message(RelayProgress(request.request_id))])
        link.leave()
        serving.join(10)
        assert not serving.is_alive()
        assert (server.commitments.peek("1.2.3.999") is not None) == relayed
    finally:
        broker.close(linger=0)
        context.term()


@pytest.mark.parametrize("undefined", [True, False])
@pytest.mark.parametrize("implicit", [True, False])
def test_a_long_request_is_read_only_as_far_as_it_is_held(
        tmp_path: Path, monkeypatch: Any, implicit: bool, undefined: bool) -> None:
    """An 8 MiB N-ACTION holds about 120,000 items (of undefined length, as pynetdicom
    and most modalities encode them): decoded whole, as pydicom objects, they took 190 MB and
    3.5 s of the acceptor each, and one peer may send as many at once as it may hold
    associations (six took the acceptor from 47 MB to 1.1 GB). The relay reads the
    Transaction UID and the items it holds on from the bytes, and relays them as received."""
    monkeypatch.setattr(acceptor_side, "MAX_HELD_INSTANCES", 3)
    built = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return read_sequence_item(*args, **kwargs)

    monkeypatch.setattr(filereader, "read_sequence_item", counted)
    dataset = received([f"1.2.3.{n}" for n in range(50)], implicit, undefined)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    broker = context.socket(zmq.ROUTER)
    broker.bind("inproc://broker")
    server = relay_server(tmp_path, context)
    monkeypatch.setattr(GoingLink, "accepted_syntax",
                        lambda self, context_id: str(ImplicitVRLittleEndian if implicit
                                                     else ExplicitVRLittleEndian))
    link = GoingLink()
    serving = threading.Thread(target=server.serve, args=(link, n_action(dataset), 1))
    serving.start()
    try:
        assert broker.poll(10_000)
        _, header, *payload = broker.recv_multipart()
        request = decode(header)
        assert isinstance(request, RelayRequest)
        assert request.hold_instances == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
        assert request.transaction_uid == "1.2.3.999"
        assert server.commitments.peek("1.2.3.999") is not None
        assert payload == [dataset]
        assert built == []  # no item became a pydicom Dataset
        link.leave()
        serving.join(10)
        assert not serving.is_alive()
    finally:
        broker.close(linger=0)
        context.term()


class SecondModalityLink(GoingLink):
    """CT2's association: what the relay answered it."""

    facts = AssociationFacts("CT2", "DICOM-ROUTER", "127.0.0.1")

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Any] = []

    def send(self, primitive: Any, context_id: int) -> None:
        self.sent.append(primitive)


def test_another_requesters_transaction_uid_is_refused_and_its_commitment_kept(
        tmp_path: Path) -> None:
    """Regression: an N-ACTION from CT2 naming the Transaction UID of CT1's pending
    commitment overwrote it (CT1's result would then go to CT2), and when the upstream
    refused CT2's request the commitment was forgotten (CT1's result refused as unknown).
    Now CT2 is refused before anything is relayed, and CT1's commitment stays."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    broker = context.socket(zmq.ROUTER)
    broker.bind("inproc://broker")
    config = parse_config({
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": 9}},
        "known_aes": {"CT1": {"host": "127.0.0.1", "port": 9},
                      "CT2": {"host": "127.0.0.1", "port": 9}},
        "rules": [{"name": "archive", "forward": ["pacs"], "query": ["pacs"]}]})
    server = RelayServer(config, context, "inproc://broker", RuleSet(config.rules),
                         Spool(tmp_path / "spool").create())
    server.commitments.remember("1.2.3.999", "CT1", upstream_titles(config, ["pacs"]))
    link = SecondModalityLink()
    try:
        server.serve(link, n_action(received(["1.2.3.1"])), 1)
        assert not broker.poll(200)  # nothing relayed
    finally:
        broker.close(linger=0)
        context.term()
    assert [int(rsp.Status) for rsp in link.sent] == [0x0110]
    assert "pending for another requester" in str(link.sent[0].ErrorComment)
    pending = server.commitments.peek("1.2.3.999")
    assert pending is not None and pending.requester_ae == "CT1"
