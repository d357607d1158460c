"""router/relay/commitment_relay.py: an upstream's storage commitment result on its way to
the requester, against a broker that answers on an inproc socket."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import zmq
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import encode

from router.core.config import parse_config
from router.core.messages import RelayRequest, RelayResponse, decode
from router.core.messages import encode as encode_message
from router.core.rules import AssociationFacts, RuleSet
from router.core.spool import Spool
from router.relay.commitment_results import KeptResult, KeptResults, kept_result
from router.relay.result_courier import ResultCourier
from router.relay.server import RelayServer
from router.relay.state import upstream_titles

UID = "1.2.826.0.1.3680043.8.498.7"
CONFIG = parse_config({
    "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                              "port": 9}},
    "known_aes": {"CT1": {"host": "127.0.0.1", "port": 9}},
    "rules": [{"name": "archive", "forward": ["pacs"], "query": ["pacs"]}]})


class UpstreamLink:
    """The upstream's association, reporting the result: what the relay answered it."""

    facts = AssociationFacts("PACS", "DICOM-ROUTER", "127.0.0.1")

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def accepted_syntax(self, context_id: int) -> str:
        return str(ImplicitVRLittleEndian)

    def cancelled(self, message_id: int) -> bool:
        return False

    def gone(self) -> bool:
        return False

    def send(self, primitive: Any, context_id: int) -> None:
        self.sent.append(primitive)

    def storage_contexts(self) -> list[list[Any]]:
        return []


def _report() -> N_EVENT_REPORT:
    info = Dataset()
    info.TransactionUID = UID
    msg = N_EVENT_REPORT()
    msg.MessageID = 3
    msg.AffectedSOPClassUID = "1.2.840.10008.1.20.1"
    msg.AffectedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
    msg.EventTypeID = 1
    msg.EventInformation = BytesIO(encode(info, True, True))
    return msg


def test_a_result_the_disk_cannot_keep_stays_pending_for_the_upstreams_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the requester unreachable and the spool full, the upstream heard a
    failure but the commitment had been taken: its retry was refused as an unknown
    transaction and the requester never heard (nothing may be lost)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    broker = context.socket(zmq.ROUTER)
    broker.bind("inproc://broker")
    server = RelayServer(CONFIG, context, "inproc://broker", RuleSet(CONFIG.rules),
                         Spool(tmp_path / "spool").create())
    server.commitments.remember(UID, "CT1", upstream_titles(CONFIG, ["pacs"]))

    def full(*_: object) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(server.results, "keep", full)
    link = UpstreamLink()
    serving = threading.Thread(target=server.serve, args=(link, _report(), 1))
    serving.start()
    try:
        assert broker.poll(10_000)
        identity, header, *_ = broker.recv_multipart()
        request = decode(header)
        assert isinstance(request, RelayRequest) and request.upstreams == ["CT1"]
        # The worker could not reach the requester: no status from it.
        broker.send_multipart([identity, encode_message(RelayResponse(
            request.request_id, 0xA700, final=True, error_comment="connection refused",
            unanswered=True))])
        serving.join(10)
        assert not serving.is_alive()
    finally:
        broker.close(linger=0)
        context.term()
    assert [int(rsp.Status) for rsp in link.sent] != [0x0000]  # the upstream tries again
    assert server.commitments.peek(UID) is not None  # and its retry finds the commitment


def test_a_later_report_is_kept_without_waiting_for_the_earliers_send(tmp_path: Path) -> None:
    """Regression: the courier held the earlier result's lock while it sent it (up to
    request_timeout, 120 s, for a silent requester), and a later report, kept under that
    lock, held the upstream's N-EVENT-REPORT that long: Orthanc gives up after 10 s. Now the
    send is leased in the file: the later is kept at once, and goes once the send ended."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    broker = context.socket(zmq.ROUTER)
    broker.bind("inproc://broker")
    config = CONFIG.model_copy(update={"request_timeout": 5.0})
    results = KeptResults(tmp_path)
    courier = ResultCourier(lambda: config, context, "inproc://broker", results)
    results.keep(_kept(b"partial", time.time() - 10))
    sending = threading.Thread(target=courier.retry_due)
    sending.start()
    try:
        assert broker.poll(10_000)  # the courier sends the earlier: the requester is silent
        identity, header, payload = broker.recv_multipart()
        request = decode(header)
        assert isinstance(request, RelayRequest) and request.upstreams == ["CT1"]
        # Another acceptor keeps the upstream's later report meanwhile.
        KeptResults(tmp_path).keep(_kept(b"final", time.time()))
        assert sending.is_alive()  # kept while the earlier's send still waits
        assert list(results.due(time.time())) == []  # not sent before that send ends
        sent = [payload]
        broker.send_multipart([identity, encode_message(RelayResponse(
            request.request_id, 0x0000, final=True, upstream="CT1"))])
        # The earlier taken, the later goes next.
        assert broker.poll(10_000)
        identity, header, payload = broker.recv_multipart()
        sent.append(payload)
        broker.send_multipart([identity, encode_message(RelayResponse(
            decode(header).request_id, 0x0000, final=True, upstream="CT1"))])
        sending.join(10)
        assert not sending.is_alive()
    finally:
        broker.close(linger=0)
        context.term()
    assert sent == [b"partial", b"final"]
    assert list(tmp_path.iterdir()) == []  # both delivered


def _kept(body: bytes, at: float) -> KeptResult:
    request = RelayRequest(
        request_id="r1", command="N-EVENT-REPORT", upstreams=["CT1"], calling_ae="PACS",
        called_ae="DICOM-ROUTER", peer_address="127.0.0.1",
        sop_class_uid="1.2.840.10008.1.20.1", transfer_syntax_uid="1.2.840.10008.1.2",
        sop_instance_uid="1.2.840.10008.1.20.1.1", event_type_id=1, has_dataset=True,
        to_known_ae=True)
    kept = kept_result(request, UID, "CT1", body, at, "")
    return replace(kept, attempts=0, next_at=at)
