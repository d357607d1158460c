"""pynetdicom 3.0's reactor race on a real association, forced: `dicom-router send`'s
association (send_association.associate, with its EVT_CONN_OPEN hook) keeps a C-STORE's
response for the call that waits for it.

send_c_store() pauses the association's reactor thread by clearing a checkpoint and waiting
until the reactor says it is paused; the reactor says so just before it waits on the
checkpoint. A reactor that has passed the checkpoint (the previous call had just set it)
reads the message queue once more while the new request goes out. The test holds the
reactor there, in its "paused" state, until the response is queued, and lets the reactor
read the queue before the call does: the interleaving that, beside a busy loop, lost one
C-STORE-RSP in a run of 140 (router/dicom/net.leave_responses_to_callers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from router.cli.send_association import Peer, application_entity, associate, close
from tests.dcmtk import LOCALHOST, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

_HOLD = 5.0  # seconds the forced interleaving waits for each step before it gives up


class _HeldCheckpoint(threading.Event):
    """An association's reactor checkpoint. Once `hold` is set, the reactor's next pass
    through it (the checkpoint being set, no call in progress) stays, still flagged as
    paused, until a message is in the association's queue."""

    def __init__(self, assoc: Any) -> None:
        super().__init__()
        self.set()
        self.assoc = assoc
        self.hold = threading.Event()
        self.holding = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        queue = self.assoc.dimse.msg_queue
        if self.hold.is_set() and threading.current_thread() is self.assoc:
            self.hold.clear()
            self.holding.set()
            deadline = time.monotonic() + _HOLD
            while queue.empty() and time.monotonic() < deadline:
                time.sleep(0.001)
        return passed


def _reactor_reads_first(assoc: Any, checkpoint: _HeldCheckpoint) -> threading.Event:
    """The call's blocking read of the queue waits for the held reactor's read."""
    dimse = assoc.dimse
    read = dimse.get_msg  # the router's, from the EVT_CONN_OPEN hook
    reactor_read = threading.Event()

    def get_msg(block: bool = False) -> Any:
        if block:
            reactor_read.wait(_HOLD)
            return read(block)
        result = read(block)
        if checkpoint.holding.is_set():
            reactor_read.set()
        return result

    dimse.get_msg = get_msg
    return reactor_read


def _ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "RACE"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return ds


@pytest.fixture
def scp_port() -> Iterator[int]:
    ae = AE(ae_title="SCP")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server((LOCALHOST, port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()


def test_a_response_queued_while_the_reactor_is_past_its_checkpoint_reaches_the_call(
    scp_port: int,
) -> None:
    peer = Peer(LOCALHOST, scp_port, called_ae="SCP", dimse_timeout=_HOLD)
    assoc: Any = associate(application_entity(peer), peer,
                           [(CTImageStorage, ExplicitVRLittleEndian)])
    try:
        checkpoint = _HeldCheckpoint(assoc)
        assoc._reactor_checkpoint = checkpoint
        reactor_read = _reactor_reads_first(assoc, checkpoint)
        checkpoint.hold.set()
        assert checkpoint.holding.wait(_HOLD)  # the reactor is past the checkpoint

        response = assoc.send_c_store(_ct())

        assert reactor_read.is_set()  # the interleaving was the race's
        assert getattr(response, "Status", None) == 0x0000, "the reactor took the response"
        assert assoc.is_established
    finally:
        close(assoc)
