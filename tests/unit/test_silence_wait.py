"""router/dicom/silence_wait.py with workers/relay.py: why a relayed query got no answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind  # type: ignore

import router.dicom.silence_wait as silence_wait
from router.core.messages import RelayRequest
from router.dicom.silence_wait import SilenceWait
from tests.dcmtk import free_port
from workers.relay_answers import no_answer
from workers.relay_tasks import RelayTask

FIND = PatientRootQueryRetrieveInformationModelFind


@pytest.fixture
def stalled_upstream() -> Iterator[int]:
    """A C-FIND SCP that takes the request and never answers it."""
    release = threading.Event()

    def on_find(event: Any) -> Iterator[Any]:
        release.wait(30)
        yield 0x0000, None

    ae = AE("PACS")
    ae.add_supported_context(FIND)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        yield port
    finally:
        release.set()
        server.shutdown()


def test_a_wait_that_gives_up_says_so_even_when_the_closed_socket_is_seen_first(
        stalled_upstream: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (CI): the router ends its wait by shutting the socket down; when the DUL
    thread saw the closed connection before pynetdicom's own abort ran, pynetdicom took it
    for the upstream's abort and never sent one, and the requester read "pacs aborted the
    association without answering" for an upstream that had only gone silent."""
    real_wake = silence_wait.wake_reader

    def wake_then_let_the_reader_win(assoc: Any) -> None:
        real_wake(assoc)
        deadline = time.monotonic() + 5
        while not assoc.acse.is_aborted("a-p-abort") and time.monotonic() < deadline:
            time.sleep(0.01)

    monkeypatch.setattr(silence_wait, "wake_reader", wake_then_let_the_reader_win)
    ae = AE("DICOM-ROUTER")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", stalled_upstream, ae_title="PACS")
    assert assoc.is_established
    request = RelayRequest(request_id="1-a", command="C-FIND", upstreams=["pacs"],
                           calling_ae="VIEWER", called_ae="DICOM-ROUTER",
                           peer_address="127.0.0.1", sop_class_uid=FIND,
                           transfer_syntax_uid="1.2.840.10008.1.2")
    task = RelayTask(request, None, assoc=assoc)
    task.silence = SilenceWait(0.5, lambda: None)
    task.silence.install(assoc)
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "*"
    answers = list(assoc.send_c_find(query, FIND))
    assert [status for status, _ in answers] == [Dataset()]  # no answer: the wait ended
    assert assoc.acse.is_aborted("a-p-abort")  # the order that misled the reason
    assert no_answer(task, "pacs") == "pacs did not answer in time"
