"""A relayed request whose acceptor stops under it (router/relay/server.py, call.py): the
requester gets the failure to retry, the log one plain line, and the acceptor's ZeroMQ
context terminates (the call's socket is closed)."""

from __future__ import annotations

import logging
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import zmq
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE
from pynetdicom.dsutils import encode

from router.core.config import parse_config
from router.core.rules import AssociationFacts, RuleSet
from router.core.spool import Spool
from router.relay.server import RelayServer

FIND = "1.2.840.10008.5.1.4.1.2.2.1"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
CONFIG = parse_config({
    "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                              "port": 9}},
    "rules": [{"name": "qr", "query": ["pacs"]}]})


class Link:
    """The requester's association: what the relay sent it."""

    facts = AssociationFacts("VIEWER", "DICOM-ROUTER", "127.0.0.1")

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

    def store(self, path: Path, message_id: int) -> int | None:
        return None

    def storage_contexts(self) -> list[list[Any]]:
        return []


def _request(kind: type, sop_class: str) -> Any:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = "1.2.3"
    msg = kind()
    msg.MessageID = 7
    msg.AffectedSOPClassUID = sop_class
    msg.Priority = 0
    msg.Identifier = BytesIO(encode(query, True, True))
    if kind is C_MOVE:
        msg.MoveDestination = "VIEWER"
    return msg


@pytest.mark.parametrize(("kind", "sop_class", "status"), [
    (C_FIND, FIND, 0xA700), (C_GET, GET, 0xA701), (C_MOVE, MOVE, 0xA701)])
def test_a_router_stopping_under_a_relayed_request_answers_its_failure(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: type, sop_class: str,
        status: int) -> None:
    """Regression: the relay call met zmq's ContextTerminated and the relay logged "relaying
    C-FIND failed unexpectedly: ContextTerminated" (0x0110 to the requester)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server = RelayServer(CONFIG, context, "inproc://no-broker-here", RuleSet(CONFIG.rules),
                         Spool(tmp_path / "spool").create())
    link = Link()
    serving = threading.Thread(target=server.serve, args=(link, _request(kind, sop_class), 1))
    serving.start()
    terminated = threading.Event()
    stopper = threading.Timer(0.3, lambda: (context.term(), terminated.set()))
    stopper.daemon = True
    with caplog.at_level(logging.INFO):
        stopper.start()  # what the acceptor does when it stops
        serving.join(10)
        assert terminated.wait(10), "the relay call's socket was never closed"
    assert not serving.is_alive()
    assert [int(rsp.Status) for rsp in link.sent] == [status]
    assert "router stopping" in str(link.sent[0].ErrorComment)
    assert "unexpectedly" not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)
    assert "the router is stopping" in caplog.text
