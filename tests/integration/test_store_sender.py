"""The worker's C-STORE sender (router/dicom/store_sender.py on router/dicom/store_client.py)
against real peers: a pynetdicom SCP in this process, DCMTK's storescp without --fork.

What it must keep: the dataset bytes arrive exactly (over many PDUs of the peer's size, one
association for many instances), every outcome is classified as the broker expects
(rejected, busy, no context, status, aborted mid-transfer, cannot connect, no answer), an
idle association the peer dropped is noticed, and a large file is never held in memory.
"""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage

from router.core.config import DicomDestination as DicomConfig
from router.core.errors import DeliveryError
from router.dicom.engine import (
    Abort,
    AssociateAC,
    Association,
    AssociationRequested,
    CommandReceived,
    CStoreRSP,
    DataFragment,
    PresentationContextAC,
    SendCommand,
    UserInformation,
)
from router.dicom.store_sender import DicomDestination, StorePool
from tests.archive_servers import Orthanc
from tests.dcmtk import LOCALHOST, StoreSCP, free_port
from tests.dicom_samples import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    dataset_digest,
    write_instance,
)
from tests.tcp_counters import require_delayed_ack_counter
from tests.unit.helpers import make_header

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DEFLATED_EXPLICIT_VR_LE]


class SCP:
    """A pynetdicom storage SCP whose answers a test chooses."""

    def __init__(self, *, status: int = 0x0000, max_pdu: int = 256 * 1024,
                 syntaxes: list[str] | None = None, max_associations: int = 10,
                 abort_in_store: bool = False, network_timeout: float | None = None,
                 delay: float = 0.0) -> None:
        self.port = free_port()
        self.status = status
        self.delay = delay  # seconds it takes to store an instance before answering
        self.abort_in_store = abort_in_store
        self.received: list[bytes] = []
        self.accepted = 0
        self.lock = threading.Lock()
        self.ae = AE(ae_title="SCP")
        self.ae.maximum_pdu_size = max_pdu
        self.ae.maximum_associations = max_associations
        self.ae.require_called_aet = True
        if network_timeout is not None:
            self.ae.network_timeout = network_timeout
        for context in StoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, syntaxes or SYNTAXES)

    def _store(self, event: Any) -> int:
        if self.abort_in_store:
            event.assoc.abort()
            return 0x0000
        time.sleep(self.delay)
        with self.lock:
            self.received.append(bytes(event.encoded_dataset(include_meta=False)))
        return self.status

    def _accepted(self, event: Any) -> None:
        with self.lock:
            self.accepted += 1

    def __enter__(self) -> SCP:
        self.server = self.ae.start_server(
            (LOCALHOST, self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)])
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def _destination(port: int, *, pool: StorePool | None = None, **extra: Any) -> DicomDestination:
    config = DicomConfig(type="dicom", ae_title=extra.pop("ae_title", "SCP"), host=LOCALHOST,
                         port=port, **{"acse_timeout": 5, "dimse_timeout": 10, **extra})
    return DicomDestination("pacs", config, "ROUTER", pool)


def _job(path: Path, syntax: str = EXPLICIT_VR_LE) -> Any:
    return make_header(sop_class_uid=CTImageStorage, sop_instance_uid=path.stem,
                       transfer_syntax_uid=syntax)


def _instance(folder: Path, size: int = 10_000, syntax: str = EXPLICIT_VR_LE) -> Path:
    return write_instance(folder, sop_class=CTImageStorage, transfer_syntax=syntax,
                          size_bytes=size)


def _dataset_bytes(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@pytest.fixture
def scp() -> Iterator[SCP]:
    with SCP(max_pdu=4096) as peer:
        yield peer


def test_the_dataset_bytes_arrive_exactly_over_one_association(scp: SCP, tmp_path: Path) -> None:
    files = [_instance(tmp_path, size) for size in (100, 4_000, 4_090, 120_000, 300_001)]
    sender = _destination(scp.port)
    for path in files:
        sender.deliver(_job(path), path)
    sender.close()
    assert scp.received == [_dataset_bytes(p) for p in files]
    assert scp.accepted == 1


@pytest.mark.serial  # reads the machine-wide TcpExt DelayedACKs counter
def test_a_dcmtk_destination_with_nagle_is_acknowledged_at_once(tmp_path: Path) -> None:
    """storescp with DCMTK's defaults (Nagle on) writes each C-STORE-RSP's header and body
    apart; the body waits for the header's ACK, which Linux would send only when its 40 ms
    delayed-ACK timer fires. The sender asks for a quick ACK after every receive
    (router/dicom/quick_ack.py): the timer does not fire once per C-STORE. The counter is
    the whole machine's: other traffic may add a few."""
    before = require_delayed_ack_counter()
    files = [_instance(tmp_path / "out", 2_000) for _ in range(20)]
    with StoreSCP(tmp_path / "in", "SCP", nagle=True) as scp:
        sender = _destination(scp.port)
        for path in files:
            sender.deliver(_job(path), path)
        sender.close()
        late = require_delayed_ack_counter() - before
        assert len(scp.received_files()) == len(files)
    assert late < len(files) // 2, f"{late} delayed ACKs for {len(files)} C-STOREs"


def test_an_odd_deflated_stream_is_padded_and_arrives(tmp_path: Path) -> None:
    """PS3.5 A.5: a deflated stream of odd length gets one trailing NUL (DCMTK aborts on
    an odd fragment)."""
    path = next(p for i in range(40) if (p := _instance(
        tmp_path / str(i), 3_000 + i, DEFLATED_EXPLICIT_VR_LE)).stat().st_size % 2
        and len(_dataset_bytes(p)) % 2)
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        sender = _destination(pacs.port, ae_title="PACS")
        sender.deliver(_job(path, DEFLATED_EXPLICIT_VR_LE), path)
        sender.close()
        assert [dataset_digest(p) for p in pacs.received_files()] == [dataset_digest(path)]


def test_a_large_file_is_streamed_not_loaded(tmp_path: Path) -> None:
    path = _instance(tmp_path, 24_000_000)
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        sender = _destination(pacs.port, ae_title="PACS")
        tracemalloc.start()
        try:
            sender.deliver(_job(path), path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        sender.close()
        assert [dataset_digest(p) for p in pacs.received_files()] == [dataset_digest(path)]
    assert peak < 2_000_000  # one PDU buffer, not the 24 MB file


def test_a_destination_that_stores_a_large_instance_before_answering_gets_time_per_mb(
        tmp_path: Path) -> None:
    """The wait for the response after the last byte is dimse_timeout plus one second per MB:
    a PACS that writes a large instance to its own storage before answering was counted as
    silent at dimse_timeout, and every retry sent the whole instance again. Here 3 MB and a
    0.5 s dimse_timeout allow 3.5 s; the destination takes 1.5 s."""
    path = _instance(tmp_path, 3_000_000)
    with SCP(delay=1.5) as peer:
        sender = _destination(peer.port, dimse_timeout=0.5)
        sender.deliver(_job(path), path)
        sender.close()
    assert peer.received == [_dataset_bytes(path)]


def test_a_destination_silent_past_its_allowance_is_a_dimse_timeout(tmp_path: Path) -> None:
    path = _instance(tmp_path, 100_000)  # 0.5 s + 0.1 s allowed
    with SCP(delay=3.0) as peer:
        sender = _destination(peer.port, dimse_timeout=0.5)
        with pytest.raises(DeliveryError) as failed:
            sender.deliver(_job(path), path)
        sender.close()
    assert (failed.value.reason, failed.value.transient) == ("dimse_timeout", True)
    assert "1 s per MB" in str(failed.value)


@pytest.mark.parametrize(("status", "transient"), [(0xA700, True), (0xC000, False)])
def test_a_failure_status_is_a_status_error(tmp_path: Path, status: int,
                                            transient: bool) -> None:
    path = _instance(tmp_path)
    with SCP(status=status) as peer:
        sender = _destination(peer.port)
        with pytest.raises(DeliveryError) as failed:
            sender.deliver(_job(path), path)
        sender.close()
    assert (failed.value.reason, failed.value.transient) == ("status", transient)
    assert f"0x{status:04X}" in str(failed.value)


def test_a_warning_status_is_delivered(tmp_path: Path) -> None:
    path = _instance(tmp_path)
    with SCP(status=0xB000) as peer:
        sender = _destination(peer.port)
        sender.deliver(_job(path), path)
        sender.close()
        assert len(peer.received) == 1


def test_a_wrong_called_ae_is_a_permanent_rejection(scp: SCP, tmp_path: Path) -> None:
    path = _instance(tmp_path)
    with pytest.raises(DeliveryError) as failed:
        _destination(scp.port, ae_title="NOT-SCP").deliver(_job(path), path)
    assert (failed.value.reason, failed.value.transient) == ("rejected", False)


def test_one_association_more_than_the_peer_takes_is_busy(tmp_path: Path) -> None:
    path = _instance(tmp_path)
    with SCP(max_associations=1) as peer:
        pool = StorePool()
        holder = _destination(peer.port, pool=pool)
        holder.deliver(_job(path), path)  # keeps its association: not parked
        second = _destination(peer.port, pool=StorePool())
        second.others_open = 1
        with pytest.raises(DeliveryError) as busy:
            second.deliver(_job(path), path)
        assert busy.value.reason == "busy"
        alone = _destination(peer.port, pool=StorePool())  # the router holds no other
        with pytest.raises(DeliveryError) as rejected:
            alone.deliver(_job(path), path)
        assert (rejected.value.reason, rejected.value.transient) == ("rejected", True)
        holder.close()


def test_an_unanswered_association_is_busy_only_while_another_is_open(tmp_path: Path) -> None:
    """Like storescp without --fork: the connection is made, nobody answers."""
    path = _instance(tmp_path)
    with socket.create_server((LOCALHOST, 0)) as silent:
        port = silent.getsockname()[1]
        busy_one = _destination(port, busy_timeout=0.5)
        busy_one.others_open = 1
        with pytest.raises(DeliveryError) as busy:
            busy_one.deliver(_job(path), path)
        assert busy.value.reason == "busy"
        with pytest.raises(DeliveryError) as silent_failure:
            _destination(port, acse_timeout=0.5).deliver(_job(path), path)
        assert (silent_failure.value.reason, silent_failure.value.transient) == ("aborted", True)


def test_nothing_listening_is_a_connection_failure(tmp_path: Path) -> None:
    path = _instance(tmp_path)
    sender = _destination(free_port())
    sender.others_open = 1  # down is down, not busy
    with pytest.raises(DeliveryError) as failed:
        sender.deliver(_job(path), path)
    assert (failed.value.reason, failed.value.transient) == ("connection", True)


def test_an_unaccepted_syntax_is_no_context(tmp_path: Path) -> None:
    path = _instance(tmp_path)
    with SCP(syntaxes=[ImplicitVRLittleEndian]) as peer, pytest.raises(DeliveryError) as failed:
        _destination(peer.port).deliver(_job(path), path)
    assert (failed.value.reason, failed.value.transient) == ("no_context", False)
    assert "in transfer syntax" in str(failed.value)  # result 4: another syntax may do


def test_a_refused_sop_class_is_no_context_naming_the_class(tmp_path: Path) -> None:
    """storescp answers a SOP class it does not know with result 3 (abstract syntax not
    supported): the detail blamed the transfer syntax; it names the class."""
    private = "1.2.826.0.1.3680043.10.777.1"
    path = write_instance(tmp_path, sop_class=private, transfer_syntax=EXPLICIT_VR_LE)
    job = make_header(sop_class_uid=private, sop_instance_uid=path.stem,
                      transfer_syntax_uid=EXPLICIT_VR_LE)
    with StoreSCP(tmp_path / "in", "SCP") as scp, pytest.raises(DeliveryError) as failed:
        _destination(scp.port).deliver(job, path)
    assert (failed.value.reason, failed.value.transient) == ("no_context", False)
    assert str(failed.value).startswith(
        f"pacs does not support SOP class {private} (abstract syntax not supported)")


def test_an_abort_mid_transfer_is_a_missing_response_then_a_new_association_works(
    tmp_path: Path,
) -> None:
    path = _instance(tmp_path, 200_000)
    with SCP(abort_in_store=True) as peer:
        sender = _destination(peer.port)
        with pytest.raises(DeliveryError) as failed:
            sender.deliver(_job(path), path)
        assert (failed.value.reason, failed.value.transient) == ("aborted", True)
        assert failed.value.during_store  # the broker decides: the destination, or this one
        peer.abort_in_store = False
        sender.deliver(_job(path), path)
        sender.close()
        assert peer.received == [_dataset_bytes(path)]
        assert peer.accepted == 2


def test_an_idle_association_the_peer_dropped_is_replaced(tmp_path: Path) -> None:
    path = _instance(tmp_path)
    with SCP(network_timeout=0.3) as peer:  # pynetdicom aborts an association idle 0.3 s
        pool = StorePool()
        sender = _destination(peer.port, pool=pool)
        sender.deliver(_job(path), path)
        sender.park()
        idle = pool.open_count("pacs")
        assert idle == 1
        time.sleep(1.0)  # the peer's idle timeout passes
        sender.deliver(_job(path), path)  # on a new association, not a failure
        sender.close()
        assert len(peer.received) == 2
        assert peer.accepted == 2


class AbortingPeer:
    """A peer on the engine that accepts every context, then sends A-ABORT and closes as
    soon as the first dataset bytes of a C-STORE arrive: an abort in the middle of the
    transfer of a large dataset. `wrong_id`: it answers the C-STORE instead, with a Message
    ID it was not sent; `max_pdu`: the maximum PDU length it advertises."""

    def __init__(self, *, wrong_id: bool = False, max_pdu: int = 16384) -> None:
        self.wrong_id, self.max_pdu = wrong_id, max_pdu
        self.request: Any = None
        self.server = socket.create_server((LOCALHOST, 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            engine = Association.acceptor()
            while not engine.should_close:
                for event in engine.receive_data(conn.recv(65536)):
                    if isinstance(event, AssociationRequested):
                        contexts = tuple(PresentationContextAC(c.context_id, 0,
                                                               c.transfer_syntaxes[0])
                                         for c in event.rq.contexts)
                        conn.sendall(engine.send(AssociateAC(
                            event.rq.called_ae, event.rq.calling_ae, contexts,
                            UserInformation(max_length=self.max_pdu,
                                            implementation_class_uid="1.2.3.4"))))
                    elif isinstance(event, CommandReceived):
                        self.request = (event.context_id, event.command)
                    elif isinstance(event, DataFragment) and self.wrong_id:
                        if event.last:
                            context, rq = self.request
                            conn.sendall(engine.send(SendCommand(context, CStoreRSP(
                                rq.message_id + 1, rq.sop_class_uid, rq.sop_instance_uid, 0))))
                            return
                    elif isinstance(event, DataFragment):
                        conn.sendall(engine.send(Abort(0, 0)))
                        return


def test_an_abort_in_the_middle_of_a_large_dataset_is_a_missing_response(
    tmp_path: Path,
) -> None:
    path = _instance(tmp_path, 8_000_000)
    peer = AbortingPeer()
    sender = _destination(peer.port)
    with pytest.raises(DeliveryError) as failed:
        sender.deliver(_job(path), path)
    assert (failed.value.reason, failed.value.transient) == ("aborted", True)
    peer.thread.join(timeout=10)
    peer.server.close()
    assert sender.assoc is None  # the association is gone, not parked for reuse


def test_a_response_to_another_message_id_is_a_protocol_violation(tmp_path: Path) -> None:
    path = _instance(tmp_path, 2_000)
    peer = AbortingPeer(wrong_id=True)
    with pytest.raises(DeliveryError) as failed:
        _destination(peer.port).deliver(_job(path), path)
    assert (failed.value.reason, failed.value.transient) == ("protocol", True)
    assert "answered message ID 2 to C-STORE message ID 1" in str(failed.value)
    peer.thread.join(timeout=10)
    peer.server.close()


def test_a_peer_maximum_pdu_too_small_for_data_is_said_so(tmp_path: Path) -> None:
    path = _instance(tmp_path, 2_000)
    peer = AbortingPeer(max_pdu=7)
    with pytest.raises(DeliveryError) as failed:
        _destination(peer.port).deliver(_job(path), path)
    assert (failed.value.reason, failed.value.transient) == ("max_pdu", True)
    assert "maximum PDU length 7 leaves no room for data" in str(failed.value)
    peer.thread.join(timeout=10)
    peer.server.close()


def test_orthanc_as_a_destination_stores_every_syntax_as_sent(tmp_path: Path) -> None:
    syntaxes = [EXPLICIT_VR_LE, ImplicitVRLittleEndian, DEFLATED_EXPLICIT_VR_LE]
    files = [_instance(tmp_path / str(i), 50_000 + i, syntax)
             for i, syntax in enumerate(syntaxes)]
    with Orthanc(tmp_path / "orthanc", None, "ORTHANC") as orthanc:
        sender = _destination(orthanc.dicom_port, ae_title="ORTHANC")
        for path, syntax in zip(files, syntaxes, strict=True):
            sender.deliver(_job(path, syntax), path)
        sender.close()
        stored = tmp_path / "stored"
        stored.mkdir()
        for uid in orthanc.rest("/instances"):
            (stored / f"{uid}.dcm").write_bytes(orthanc.rest(f"/instances/{uid}/file"))
        assert sorted(dataset_digest(p) for p in stored.iterdir()) \
            == sorted(dataset_digest(p) for p in files)
