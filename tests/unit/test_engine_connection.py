"""router/acceptor/connection.py: one EngineConnection over a real socket pair, its peer
played by the engine as requestor in the test thread, its run() on a thread of its own.

The access rules, admission and counts are the real ones (AssociationEvents); only the
store handler is a fake (the real one needs a broker: the integration tests cover it).
Every wait is bounded; nothing asserts how long anything took.
"""

from __future__ import annotations

import gc
import io
import logging
import socket
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from router.acceptor import read_size
from router.acceptor.access import AccessPolicy, hash_passcode
from router.acceptor.admission import Admission
from router.acceptor.association_events import AssociationEvents
from router.acceptor.connection import EngineConnection
from router.acceptor.connection_settings import AcceptorServices, ConnectionSettings
from router.acceptor.negotiation import AcceptorOffer
from router.acceptor.session import ReceivedStore
from router.acceptor.store_handler import StoreHandler
from router.core.config import ListenConfig, SpoolConfig, UserConfig
from router.core.log_safety import SafeLogFilter, escape
from router.dicom.engine import (
    Abort,
    Aborted,
    AssociateRQ,
    Association,
    AssociationAccepted,
    AssociationRejected,
    CEchoRQ,
    CEchoRSP,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    Event,
    OtherCommand,
    PresentationContextRQ,
    ReleaseConfirmed,
    ReleaseRQ,
    SendCommand,
    SendData,
    UserIdentityRQ,
    UserInformation,
)
from router.dicom.engine.dimse import (
    DATA_SET_TYPE,
    MESSAGE_ID,
    MESSAGE_ID_RESPONDED_TO,
    STATUS,
    encode_command,
)
from router.dicom.engine.pdus import encode_pdata, encode_pdu
from router.dicom.pending import PendingConnections, Ticket
from tests.tcp_counters import require_delayed_ack_counter

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
INSTANCE = "1.2.826.0.1.3680043.9.9999.3.1"
ADDRESS = ("127.0.0.1", 40000)
WAIT = 10.0  # a bound on every wait, never an expectation of speed
MAX_PDU = 4096  # small, so that a small dataset spans several P-DATA-TF PDUs

OFFER = AcceptorOffer("ROUTER", MAX_PDU, frozenset({CT}), frozenset({IMPLICIT, EXPLICIT}),
                      frozenset({STUDY_FIND}), frozenset({IMPLICIT, EXPLICIT}),
                      "1.2.826.0.1.3680043.9.9999.1", "ROUTER_1")


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rejections(reason: str) -> float:
    return sample("dicom_router_association_rejections_total", {"reason": reason})


def dropped(reason: str) -> float:
    return sample("dicom_router_connections_dropped_total", {"reason": reason})


def us(value: int) -> bytes:
    return value.to_bytes(2, "little")


def encoded_dataset(size: int = 10_000) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = INSTANCE
    ds.PatientID = "P1"
    if size <= 10_240:  # LT's limit
        ds.ImageComments = "x" * size  # to span several PDUs and PDVs
    else:
        ds.add_new(0x7FE00010, "OB", bytes(range(256)) * (size // 256))  # Pixel Data
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


@dataclass
class Seen:
    received: ReceivedStore
    raw: bytes  # the file as the handler found it
    dataset: Dataset


@dataclass
class FakeStore:
    """The StoreHandler's interface: reads the file while it is there, answers `status`."""

    status: int = 0x0000
    comment: str = ""
    seen: list[Seen] = field(default_factory=list)
    admission: Any = field(default_factory=lambda: SimpleNamespace(spool_failed=print))
    relay: Any = None  # no relayed C-MOVE in progress

    def handle(self, received: ReceivedStore) -> tuple[int, str, bool]:
        raw = received.path.read_bytes()
        dataset = pydicom.dcmread(io.BytesIO(raw)) if raw else Dataset()
        self.seen.append(Seen(received, raw, dataset))
        return self.status, self.comment, False  # not taken: the connection removes it


@dataclass
class Harness:
    services: AcceptorServices
    store: FakeStore
    incoming: Path

    @property
    def access(self) -> AccessPolicy:
        return self.services.events.access


def make_harness(tmp_path: Path, *, request_timeout: float = WAIT,
                 network_timeout: float = WAIT, max_dataset_bytes: int | None = None,
                 **listen: Any) -> Harness:
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    # No disk watermark: tmp_path's filesystem may have little room, and that is not tested.
    admission = Admission(SpoolConfig(path=tmp_path, min_free_bytes=0, min_free_percent=0))
    events = AssociationEvents(AccessPolicy(ListenConfig(**listen)), admission)
    store = FakeStore()
    settings_ = ConnectionSettings(OFFER, request_timeout, network_timeout, max_dataset_bytes,
                                   max_message_bytes=64 * 1024, response_timeout=WAIT,
                                   incoming=incoming)
    # No relay: relayed requests are tested with real peers (tests/integration/test_relay_*).
    services = AcceptorServices(settings_, events, cast(StoreHandler, store), None, None)
    return Harness(services, store, incoming)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return make_harness(tmp_path)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(the peer's end, the acceptor's end) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    return ours, theirs


class Running:
    """The connection on its thread; `errors` holds what escaped run() (nothing should)."""

    def __init__(self, harness: Harness, ticket: Ticket | None = None, *,
                 tcp: bool = False) -> None:
        ours, theirs = tcp_pair() if tcp else socket.socketpair()
        self.sock = ours
        self.sock.settimeout(WAIT)
        self.connection = EngineConnection(theirs, ADDRESS, harness.services, ticket)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.connection.run()
        except BaseException as exc:
            self.errors.append(exc)

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "run() did not end"
        assert self.errors == []
        self.sock.close()


class Peer:
    """The requestor side: the engine in the test thread, over `running.sock`."""

    def __init__(self, running: Running) -> None:
        self.sock = running.sock
        self.engine = Association.requestor()
        self.sent = b""

    def send(self, value: Any) -> None:
        data = self.engine.send(value)
        self.sent += data
        self.sock.sendall(data)

    def next_events(self) -> list[Event]:
        """Events from the next chunk the connection sent ([ConnectionClosed...] at EOF)."""
        while True:
            data = self.sock.recv(65536)
            events = self.engine.receive_data(data)
            if events or not data:
                return events

    def events_until(self, kind: type) -> list[Event]:
        seen: list[Event] = []
        while not any(isinstance(event, kind) for event in seen):
            if self.engine.should_close:
                raise AssertionError(f"closed before a {kind.__name__}: {seen}")
            seen += self.next_events()
        return seen

    def read_to_eof(self) -> bytes:
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def associate(self, *contexts: tuple[int, str, tuple[str, ...]],
                  calling: str = "MODALITY") -> AssociationAccepted:
        self.send(request(*contexts, calling=calling))
        events = self.events_until(AssociationAccepted)
        accepted = events[-1]
        assert isinstance(accepted, AssociationAccepted)
        return accepted

    def command(self) -> CommandReceived:
        events = self.events_until(CommandReceived)
        assert isinstance(events[-1], CommandReceived)
        return events[-1]

    def release(self) -> None:
        self.send(ReleaseRQ())
        self.events_until(ReleaseConfirmed)
        self.sock.shutdown(socket.SHUT_WR)  # the acceptor waits for our close after its RP


def request(*contexts: tuple[int, str, tuple[str, ...]], calling: str = "MODALITY",
            ) -> AssociateRQ:
    contexts = contexts or ((1, CT, (EXPLICIT, IMPLICIT)), (3, VERIFICATION, (IMPLICIT,)))
    return AssociateRQ("ROUTER", calling,
                       tuple(PresentationContextRQ(*ctx) for ctx in contexts),
                       UserInformation(max_length=16384, implementation_class_uid="1.2.3.4"))


@pytest.fixture
def running(harness: Harness) -> Iterator[Running]:
    run = Running(harness)
    yield run
    run.sock.close()
    run.thread.join(WAIT)


def store_pieces(peer: Peer, dataset: bytes, piece: int, *, last: bool = True,
                 context_id: int = 1) -> None:
    for start in range(0, len(dataset), piece):
        end = start + piece
        peer.send(SendData(context_id, dataset[start:end], last=last and end >= len(dataset)))


def store(peer: Peer, message_id: int, sop_class: str = CT) -> CStoreRSP:
    """One C-STORE of a 3,000-byte dataset in 1,000-byte PDVs; the connection's answer."""
    peer.send(SendCommand(1, CStoreRQ(message_id, sop_class, INSTANCE)))
    store_pieces(peer, encoded_dataset(3000), 1000)
    answer = peer.command().command
    assert isinstance(answer, CStoreRSP)
    return answer


# --- verification and storage --------------------------------------------------------------


def test_echo_is_answered_success_then_release(harness: Harness, running: Running) -> None:
    peer = Peer(running)
    peer.associate()
    peer.send(SendCommand(3, CEchoRQ(message_id=17)))
    response = peer.command()
    assert response.context_id == 3 and response.command == CEchoRSP(17, 0x0000)
    assert harness.access.open_count("MODALITY") == 1
    peer.release()
    running.join()
    assert harness.access.open_count("MODALITY") == 0
    assert harness.store.seen == []


def test_store_in_fragments_reaches_the_handler_as_a_part10_file(
        harness: Harness, running: Running) -> None:
    harness.store.status, harness.store.comment = 0xB000, "coerced"
    dataset = encoded_dataset()
    peer = Peer(running)
    accepted = peer.associate()
    assert accepted.ac.accepted()[1] == EXPLICIT  # the sender's first choice
    peer.send(SendCommand(1, CStoreRQ(message_id=42, sop_class_uid=CT,
                                      sop_instance_uid=INSTANCE, priority=1)))
    store_pieces(peer, dataset, 1500)  # PDVs of 1.5 KB in PDUs of at most 4 KB
    response = peer.command()
    assert response.command == CStoreRSP(42, CT, INSTANCE, 0xB000, "coerced")
    [seen] = harness.store.seen
    assert seen.raw.endswith(dataset)
    meta_length = 144 + int.from_bytes(seen.raw[140:144], "little")
    assert seen.raw[meta_length:] == dataset  # byte for byte, nothing added or lost
    assert seen.dataset.file_meta.TransferSyntaxUID == EXPLICIT
    assert seen.dataset.file_meta.MediaStorageSOPInstanceUID == INSTANCE
    assert seen.dataset.SOPInstanceUID == INSTANCE
    received = seen.received
    assert (received.sop_class_uid, received.sop_instance_uid) == (CT, INSTANCE)
    assert received.transfer_syntax_uid == EXPLICIT and received.priority == 1
    assert received.path.parent == harness.incoming
    assert received.session.calling_ae == "MODALITY" and received.session.called_ae == "ROUTER"
    assert not received.session.dataset_truncated
    peer.release()
    running.join()
    assert list(harness.incoming.iterdir()) == []  # the fake took nothing: removed
    assert harness.access.open_count("MODALITY") == 0


@pytest.mark.serial  # reads the machine-wide TcpExt DelayedACKs counter
def test_a_sender_with_nagle_is_acknowledged_at_once_over_tcp(harness: Harness) -> None:
    """DCMTK keeps Nagle on and writes a PDU's header and body apart: the body waits for the
    header's ACK, which Linux delays until its 40 ms timer fires while the receiver has
    nothing to send. The connection asks for a quick ACK after every receive
    (router/dicom/quick_ack.py), so the kernel's delayed-ACK timer does not fire once per
    C-STORE. The counter is the whole machine's: other traffic may add a few."""
    before = require_delayed_ack_counter()
    running = Running(harness, tcp=True)  # the peer's socket keeps Nagle on, like DCMTK's
    peer = Peer(running)
    peer.associate()
    stores = 20
    for message_id in range(1, stores + 1):
        peer.send(SendCommand(1, CStoreRQ(message_id, CT, f"{INSTANCE}.{message_id}")))
        store_pieces(peer, encoded_dataset(100), 4000)
        assert peer.command().command == CStoreRSP(message_id, CT, f"{INSTANCE}.{message_id}",
                                                   0x0000)
    peer.release()
    running.join()
    late = require_delayed_ack_counter() - before
    assert late < stores // 2, f"{late} delayed ACKs for {stores} C-STOREs"


def test_a_large_dataset_in_many_pdus_is_kept_byte_for_byte_as_the_reads_grow(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that fills the buffer while a large dataset arrives makes the connection read
    larger pieces, and a read's fragments go to the file together (fragment_runs.py): across
    the switch and the runs, nothing is lost or reordered. Once the association is quiet
    again the reads are small again. Small sizes, so that a 3 MB dataset crosses them."""
    monkeypatch.setattr(read_size, "RECV_BYTES", 8 * 1024)
    monkeypatch.setattr(read_size, "LARGE_RECV_BYTES", 64 * 1024)
    monkeypatch.setattr(read_size, "GROW_AFTER_BYTES", 200_000)
    sizes: list[int] = []  # every size the connection chose after a read
    choose = read_size.next_read_size

    def recorded(*args: Any) -> int:
        sizes.append(choose(*args))
        return sizes[-1]

    monkeypatch.setattr(read_size, "next_read_size", recorded)
    running = Running(harness)
    small, large = encoded_dataset(150_000), encoded_dataset(3_000_000)
    peer = Peer(running)
    peer.associate()
    for message_id, dataset in ((7, small), (8, large)):
        peer.send(SendCommand(1, CStoreRQ(message_id=message_id, sop_class_uid=CT,
                                          sop_instance_uid=INSTANCE)))
        store_pieces(peer, dataset, 4000)  # PDUs of at most 16 KB: many to a read
        assert peer.command().command == CStoreRSP(message_id, CT, INSTANCE, 0x0000)
        if dataset is small:  # under GROW_AFTER_BYTES: the reads keep their size
            assert set(sizes) == {8 * 1024}
    for seen, dataset in zip(harness.store.seen, (small, large), strict=True):
        meta_length = 144 + int.from_bytes(seen.raw[140:144], "little")
        assert seen.raw[meta_length:] == dataset
    # The socket's buffer (far more than 8 KiB) filled while 3 MB went: a full read happened.
    assert 64 * 1024 in sizes
    for message_id in (9, 10):  # the second starts after the first's read was handled whole
        peer.send(SendCommand(3, CEchoRQ(message_id)))
        assert peer.command().command == CEchoRSP(message_id, 0x0000)
    assert sizes[-1] == 8 * 1024 and len(running.connection._buffer) == 8 * 1024
    peer.release()
    running.join()


def test_the_read_size_grows_for_a_large_dataset_only_and_shrinks_when_quiet() -> None:
    small, large = read_size.RECV_BYTES, read_size.LARGE_RECV_BYTES
    past = read_size.GROW_AFTER_BYTES
    assert read_size.next_read_size(small, small, True, past) == large  # full, past 2 MiB
    assert read_size.next_read_size(small, small, True, past - 1) == small  # 0.5 MB: stays
    assert read_size.next_read_size(small, small - 1, True, past) == small  # not full
    assert read_size.next_read_size(large, large, True, past) == large
    assert read_size.next_read_size(large, small - 1, True, past) == large  # still arriving
    assert read_size.next_read_size(large, small, False, 0) == large  # the next one streams
    assert read_size.next_read_size(large, 200, False, 0) == small  # quiet: memory back
    assert read_size.next_read_size(small, 200, False, 0) == small


def test_two_stores_on_one_association(harness: Harness, running: Running) -> None:
    peer = Peer(running)
    peer.associate()
    for message_id in (1, 2):
        peer.send(SendCommand(1, CStoreRQ(message_id, CT, f"{INSTANCE}.{message_id}")))
        store_pieces(peer, encoded_dataset(100 * message_id), 64)
        assert peer.command().command == CStoreRSP(message_id, CT, f"{INSTANCE}.{message_id}",
                                                   0x0000)
    peer.release()
    running.join()
    assert [s.received.sop_instance_uid for s in harness.store.seen] == [
        f"{INSTANCE}.1", f"{INSTANCE}.2"]


def test_an_ended_association_is_freed_at_once_not_left_to_the_cycle_collector(
        harness: Harness) -> None:
    """Modalities that open one association per instance and viewers that poll with C-ECHO
    churn associations all day. An ended connection sat in reference cycles (its link, relay
    thread and request handlers hold its bound methods) with its 128 KB read buffer until a
    full collection: the acceptor grew by about 10 KB per association."""
    # A relay that is never asked anything: its RelayThread is part of every association.
    harness.services = replace(harness.services, relay=cast(Any, SimpleNamespace()))
    ended: list[weakref.ref[EngineConnection]] = []
    gc.disable()
    try:
        for message_id in range(1, 21):
            run = Running(harness)
            peer = Peer(run)
            peer.associate()
            peer.send(SendCommand(3, CEchoRQ(message_id=message_id)))
            peer.command()
            assert store(peer, message_id).status == 0x0000
            peer.release()
            run.join()
            ended.append(weakref.ref(run.connection))
            del run, peer
        assert sum(1 for ref in ended if ref() is not None) == 0
    finally:
        gc.enable()


def test_store_past_max_dataset_bytes_reaches_the_handler_truncated(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, max_dataset_bytes=1000)
    running = Running(harness)
    peer = Peer(running)
    peer.associate()
    peer.send(SendCommand(1, CStoreRQ(5, CT, INSTANCE)))
    store_pieces(peer, encoded_dataset(5000), 700)
    peer.command()
    [seen] = harness.store.seen
    assert seen.received.session.dataset_truncated and seen.raw == b""
    peer.release()
    running.join()


def test_store_whose_sop_class_is_not_its_contexts_is_refused_0122(
        harness: Harness, running: Running) -> None:
    peer = Peer(running)
    peer.associate()
    mr = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage, sent on the CT context
    answer = store(peer, 6, mr)
    assert answer.status == 0x0122 and answer.message_id_responded == 6
    assert harness.store.seen == [] and list(harness.incoming.iterdir()) == []
    assert store(peer, 7).status == 0x0000  # the association goes on
    peer.release()
    running.join()


def test_a_store_without_a_data_set_is_aborted_at_once(
        harness: Harness, running: Running, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: a C-STORE-RQ with Data Set Type 0x0101 waited for a dataset that never
    came, until network_timeout, and was logged as a silent peer."""
    peer = Peer(running)
    peer.associate()
    before = dropped("protocol_error")
    command = OtherCommand(0x0001, {0x0002: CT.encode() + b"\0", 0x0110: us(9),
                                    0x0800: us(0x0101), 0x1000: INSTANCE.encode()})
    with caplog.at_level(logging.WARNING, logger="router.acceptor.connection"):
        peer.send(SendCommand(1, command))
        events = peer.events_until(Aborted)
    assert isinstance(events[-1], Aborted) and events[-1].source == 2  # service provider
    running.join()
    assert dropped("protocol_error") == before + 1
    [record] = caplog.records
    assert "C-STORE-RQ that says no data set follows" in record.getMessage()
    assert harness.store.seen == [] and list(harness.incoming.iterdir()) == []


def test_a_peer_whose_maximum_pdu_is_below_7_is_rejected_in_one_line(
        harness: Harness, running: Running, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: the AC went out, then the first answer raised LocalProtocolError and the
    acceptor logged an ERROR with a traceback."""
    peer = Peer(running)
    before = dropped("protocol_error")
    rq = request()
    with caplog.at_level(logging.WARNING):
        peer.send(replace(rq, user_info=replace(rq.user_info, max_length=6)))
        events = peer.events_until(AssociationRejected)
    assert isinstance(events[-1], AssociationRejected)
    assert (events[-1].rj.result, events[-1].rj.source, events[-1].rj.reason) == (1, 1, 1)
    peer.sock.shutdown(socket.SHUT_WR)
    running.join()
    assert dropped("protocol_error") == before + 1
    [record] = [r for r in caplog.records if r.name.startswith("router")]
    assert "maximum PDU length 6 is too small" in record.getMessage()
    # An A-ASSOCIATE-RJ went out, not an A-ABORT: the line says so.
    assert record.getMessage().startswith("rejecting the association from ")
    assert record.levelno == logging.WARNING and record.exc_info is None


# Regression (engine hunt): these were logged in the state table's words ("RQ_PDU in STA6",
# "unrecognized PDU type 0x16"), which tell an operator nothing.
@pytest.mark.parametrize("associate, sent, said", [
    (True, encode_pdu(request()), "a second A-ASSOCIATE-RQ on an established association "
                                  "[RQ_PDU in STA6]"),
    (False, encode_pdata(1, b"\x00" * 8, 0, 16384),
     "P-DATA before the association was accepted [PDATA_PDU in STA2]"),
    (False, bytes.fromhex("160301020001") + bytes(64),  # a TLS 1.2 ClientHello's record
     "a TLS ClientHello on a plain (non-TLS) port: is the sender set up for TLS? "
     "(PDU type 0x16)"),
], ids=["second_rq", "pdata_first", "tls_hello"])
def test_a_protocol_error_is_logged_in_words_an_operator_understands(
        running: Running, caplog: pytest.LogCaptureFixture, associate: bool, sent: bytes,
        said: str) -> None:
    peer = Peer(running)
    if associate:
        peer.associate()
    with caplog.at_level(logging.WARNING, logger="router.acceptor.connection"):
        running.sock.sendall(sent)
        peer.read_to_eof()
        running.join()
    [record] = caplog.records
    assert record.getMessage() == f"aborting the connection from {ADDRESS[0]}: {said}"


def test_a_malformed_sop_class_is_described_in_the_log_never_quoted(
        harness: Harness, running: Running, caplog: pytest.LogCaptureFixture) -> None:
    """README "Hostile input": a peer's malformed UID could forge log lines or carry a name."""
    peer = Peer(running)
    peer.associate()
    with caplog.at_level(logging.WARNING, logger="router.acceptor.store_intake"):
        answer = store(peer, 6, "PATIENT^JOHN 1970 \r\nFAKE ERROR")
    assert answer.status == 0x0122
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "a malformed UID (" in logged and "not only digits and dots" in logged
    assert "PATIENT" not in logged and "FAKE" not in logged
    peer.release()
    running.join()


@pytest.mark.parametrize("sop_class", [VERIFICATION, STUDY_FIND])
def test_store_on_a_context_that_is_not_storage_is_refused_0122(
        harness: Harness, running: Running, sop_class: str) -> None:
    """The SOP class is the context's, but no destination could store a Verification or
    C-FIND instance: refused at once, not answered Success and dead-lettered later."""
    peer = Peer(running)
    peer.associate((1, CT, (EXPLICIT,)), (3, sop_class, (EXPLICIT,)))
    before = sample("dicom_router_instances_received_total", {"result": "rejected"})
    peer.send(SendCommand(3, CStoreRQ(6, sop_class, INSTANCE)))
    store_pieces(peer, encoded_dataset(3000), 1000, context_id=3)
    answer = peer.command().command
    assert isinstance(answer, CStoreRSP)
    assert answer.status == 0x0122 and answer.message_id_responded == 6
    assert answer.error_comment == "SOP class is not a storage SOP class"
    assert sample("dicom_router_instances_received_total",
                  {"result": "rejected"}) == before + 1
    assert harness.store.seen == [] and list(harness.incoming.iterdir()) == []
    assert store(peer, 7).status == 0x0000  # the association goes on
    peer.release()
    running.join()


def test_store_without_a_file_to_write_is_answered_a700_and_the_association_goes_on(
        harness: Harness, running: Running) -> None:
    """No file can be created in incoming/ (no inode left, too many open files, the folder
    removed): a DICOM status the sender retries on, not an abort or a traceback."""
    peer = Peer(running)
    peer.associate()
    harness.incoming.rmdir()
    before = sample("dicom_router_instances_received_total", {"result": "out_of_resources"})
    answer = store(peer, 8)
    assert answer.status == 0xA700 and answer.message_id_responded == 8
    assert answer.error_comment.startswith("router spool: No such file or directory")
    assert sample("dicom_router_instances_received_total",
                  {"result": "out_of_resources"}) == before + 1
    assert harness.store.seen == []
    harness.incoming.mkdir()
    assert store(peer, 9).status == 0x0000  # the association goes on
    peer.release()
    running.join()


# --- who is let in ----------------------------------------------------------------------------


def test_a_query_context_is_accepted_and_without_a_relay_its_request_refused(
        harness: Harness, running: Running) -> None:
    peer = Peer(running)
    peer.associate((1, CT, (EXPLICIT,)), (3, STUDY_FIND, (IMPLICIT,)))
    assert peer.engine.accepted == {1: EXPLICIT, 3: IMPLICIT}
    find = OtherCommand(0x0020, {0x0002: b"1.2.840.10008.5.1.4.1.2.2.1\0", 0x0110: us(9),
                                 0x0700: us(0), 0x0800: us(0)})
    peer.send(SendCommand(3, find))
    peer.send(SendData(3, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ", last=True))
    answer = peer.command().command
    assert isinstance(answer, OtherCommand) and answer.command_field == 0x8020
    assert answer.us(0x0900) == 0x0211 and answer.us(0x0120) == 9
    peer.release()
    running.join()
    assert harness.access.open_count("MODALITY") == 0


def test_calling_ae_not_allowed_is_rejected_1_1_3_and_counted(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, allowed_calling_ae=["CT1"])
    before = rejections("calling_ae")
    running = Running(harness)
    peer = Peer(running)
    peer.send(request(calling="INTRUDER"))
    events = peer.events_until(AssociationRejected)
    rejected = events[-1]
    assert isinstance(rejected, AssociationRejected)
    assert (rejected.rj.result, rejected.rj.source, rejected.rj.reason) == (1, 1, 3)
    running.sock.shutdown(socket.SHUT_WR)
    running.join()
    assert rejections("calling_ae") == before + 1
    assert harness.access.open_count("INTRUDER") == 0


def test_allowed_calling_ae_is_accepted(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, allowed_calling_ae=["CT1"])
    running = Running(harness)
    peer = Peer(running)
    peer.associate(calling="CT1")
    peer.release()
    running.join()


@pytest.mark.parametrize("calling, called, reject, label", [
    ("EVIL\nFORGED", "ROUTER", (1, 1, 3), "calling_ae"),
    ("\x1b[2JCT", "ROUTER", (1, 1, 3), "calling_ae"),
    ("A\\B", "ROUTER", (1, 1, 3), "calling_ae"),
    ("CT\x7f", "ROUTER", (1, 1, 3), "calling_ae"),
    ("CT1", "ROU\rTER", (1, 1, 7), "called_ae"),
    ("CT1", "R\\OUTER", (1, 1, 7), "called_ae"),
])
def test_an_ae_title_with_control_characters_or_a_backslash_is_rejected_in_one_line(
        harness: Harness, running: Running, caplog: pytest.LogCaptureFixture,
        calling: str, called: str, reject: tuple[int, int, int], label: str) -> None:
    # PS3.5 6.2: no control characters, no backslash. Accepted, the title reached job
    # headers, logs and the live status (a newline forged a log line, ESC drove terminals).
    before = rejections(label)
    rq = request()
    with caplog.at_level(logging.WARNING, "router.acceptor"):
        assert rejected_with(Peer(running), AssociateRQ(called, calling, rq.contexts,
                                                        rq.user_info)) == reject
        running.join()
    assert rejections(label) == before + 1
    [record] = [r for r in caplog.records if "rejecting association" in r.getMessage()]
    assert f"'{escape(called if label == 'called_ae' else calling)}' holds a control " \
           "character or a backslash" in record.getMessage()
    SafeLogFilter().filter(record)  # as every router process's handler renders it
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in record.getMessage())
    assert harness.access.open_count(calling) == 0


def test_request_without_contexts_is_rejected(harness: Harness, running: Running) -> None:
    before = rejections("no_presentation_context")
    rq = request()
    empty = AssociateRQ(rq.called_ae, rq.calling_ae, (), rq.user_info)
    assert rejected_with(Peer(running), empty) == (1, 1, 1)
    running.join()
    assert rejections("no_presentation_context") == before + 1


def test_foreign_application_context_is_rejected(harness: Harness, running: Running) -> None:
    peer = Peer(running)
    rq = request()
    peer.send(AssociateRQ(rq.called_ae, rq.calling_ae, rq.contexts, rq.user_info,
                          application_context="1.2.3.4.5"))
    rejected = peer.events_until(AssociationRejected)[-1]
    assert isinstance(rejected, AssociationRejected)
    assert (rejected.rj.result, rejected.rj.source, rejected.rj.reason) == (1, 1, 2)
    running.sock.shutdown(socket.SHUT_WR)
    running.join()


def rejected_with(peer: Peer, rq: AssociateRQ) -> tuple[int, int, int]:
    peer.send(rq)
    rejected = peer.events_until(AssociationRejected)[-1]
    assert isinstance(rejected, AssociationRejected)
    peer.sock.shutdown(socket.SHUT_WR)
    return rejected.rj.result, rejected.rj.source, rejected.rj.reason


def test_pending_ticket_is_released_once_the_request_is_in(harness: Harness) -> None:
    pending = PendingConnections(per_source=4, total=8)
    ticket = pending.admit(ADDRESS[0])
    assert isinstance(ticket, Ticket)
    running = Running(harness, ticket)
    peer = Peer(running)
    assert pending.count(ADDRESS[0]) == 1  # still sending its request
    peer.associate()
    # Associated: no longer pending for its source (max_associations counts it now).
    assert pending.count(ADDRESS[0]) == 0
    peer.release()
    running.join()
    assert pending.count() == 0


def test_pending_ticket_of_a_silent_peer_is_released(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, request_timeout=0.2)
    pending = PendingConnections(per_source=4, total=8)
    ticket = pending.admit(ADDRESS[0])
    assert isinstance(ticket, Ticket)
    running = Running(harness, ticket)
    Peer(running).read_to_eof()
    running.join()
    assert pending.count() == 0


def test_draining_rejects_transiently_and_frees_the_slot(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, max_associations=1)
    harness.services.events.admission.draining = True
    running = Running(harness)
    assert rejected_with(Peer(running), request()) == (2, 3, 1)  # temporary congestion
    running.join()
    # The one slot taken before the refusal was given back: the next one gets in.
    harness.services.events.admission.draining = False
    running = Running(harness)
    peer = Peer(running)
    peer.associate()
    peer.release()
    running.join()


def test_max_associations_is_held_while_established_and_settled_after(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, max_associations=1)
    first = Running(harness)
    first_peer = Peer(first)
    first_peer.associate()
    second = Running(harness)
    assert rejected_with(Peer(second), request()) == (2, 3, 2)  # local limit exceeded
    second.join()
    first_peer.release()
    first.join()
    third = Running(harness)
    peer = Peer(third)
    peer.associate()
    peer.release()
    third.join()


def test_wrong_user_identity_is_rejected(tmp_path: Path) -> None:
    stored = hash_passcode("right", iterations=1000)
    harness = make_harness(tmp_path, users=[UserConfig(username="tech", passcode_hash=stored)])
    for passcode, expected in ((b"wrong", (1, 1, 1)), (b"right", None)):
        running = Running(harness)
        peer = Peer(running)
        rq = request()
        identity = UserIdentityRQ(2, False, b"tech", passcode)
        rq = AssociateRQ(rq.called_ae, rq.calling_ae, rq.contexts,
                         UserInformation(max_length=16384, implementation_class_uid="1.2.3.4",
                                         identity=identity))
        if expected is None:
            peer.send(rq)
            peer.events_until(AssociationAccepted)
            peer.release()
        else:
            assert rejected_with(peer, rq) == expected
        running.join()
    assert harness.access.open_count("MODALITY") == 0


# --- protocol errors, timeouts, aborts --------------------------------------------------------


DROP_LABELS = ("unknown_pdu_type", "pdu_too_large", "protocol_error")
# Regression: in Sta2 the engine answers any bad PDU with AA-1 (reason 0), and the label was
# taken from that reason: an unknown PDU type first was counted as "protocol_error".


@pytest.mark.parametrize(("garbage", "label"), [
    (b"\x99\x00\x00\x00\x00\x04abcd", "unknown_pdu_type"),
    (b"GET / HTTP/1.1\r\nHost: router\r\n\r\n", "unknown_pdu_type"),  # a web client
    (b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03", "protocol_error"),  # P-DATA first
    (b"\x01\x00\x7f\xff\xff\xff", "pdu_too_large"),  # an RQ declaring 2 GiB
])
def test_garbage_first_pdu_is_aborted_and_counted(
        harness: Harness, running: Running, garbage: bytes, label: str) -> None:
    before = {name: dropped(name) for name in DROP_LABELS}
    running.sock.sendall(garbage)
    running.sock.shutdown(socket.SHUT_WR)
    answer = Peer(running).read_to_eof()
    # An A-ABORT (type 7) or a plain close; never an association.
    assert answer == b"" or answer[:1] == b"\x07"
    running.join()
    assert sum(dropped(name) - before[name] for name in DROP_LABELS) == 1  # counted once
    assert dropped(label) == before[label] + 1  # under the documented label


def test_unknown_pdu_type_once_associated_is_counted_as_such(
        harness: Harness, running: Running) -> None:
    before = dropped("unknown_pdu_type")
    peer = Peer(running)
    peer.associate()
    running.sock.sendall(b"\x99\x00\x00\x00\x00\x04abcd")
    running.sock.shutdown(socket.SHUT_WR)
    assert peer.read_to_eof()[:1] == b"\x07"
    running.join()
    assert dropped("unknown_pdu_type") == before + 1
    assert harness.access.open_count("MODALITY") == 0


def test_silent_peer_is_closed_after_the_request_timeout(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, request_timeout=0.2)
    before = dropped("request_timeout")
    running = Running(harness)
    assert Peer(running).read_to_eof() == b""  # closed without a word
    running.join()
    assert dropped("request_timeout") == before + 1


def test_half_sent_request_is_closed_after_the_request_timeout(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, request_timeout=0.2)
    before = dropped("request_timeout")
    running = Running(harness)
    peer = Peer(running)
    data = peer.engine.send(request())
    running.sock.sendall(data[: len(data) // 2])
    assert peer.read_to_eof() == b""
    running.join()
    assert dropped("request_timeout") == before + 1


def test_silent_association_is_aborted_after_the_network_timeout(tmp_path: Path) -> None:
    harness = make_harness(tmp_path, network_timeout=0.2)
    before = dropped("network_timeout")
    running = Running(harness)
    peer = Peer(running)
    peer.associate()
    assert any(isinstance(event, Aborted) for event in peer.events_until(Aborted))
    running.join()
    assert dropped("network_timeout") == before + 1
    assert harness.access.open_count("MODALITY") == 0


def wait_for_file(folder: Path) -> None:
    for _ in range(int(WAIT / 0.01)):
        if any(folder.iterdir()):
            return
        threading.Event().wait(0.01)
    raise AssertionError("the connection never created the file")


@pytest.mark.parametrize("how", ["abort", "close"])
def test_store_cut_in_the_middle_leaves_no_file(harness: Harness, running: Running,
                                                how: str) -> None:
    peer = Peer(running)
    peer.associate()
    peer.send(SendCommand(1, CStoreRQ(9, CT, INSTANCE)))
    store_pieces(peer, encoded_dataset()[:5000], 1000, last=False)
    wait_for_file(harness.incoming)  # the dataset was being written when it was cut
    if how == "abort":
        peer.send(Abort(0, 0))
    running.sock.shutdown(socket.SHUT_WR)
    running.join()
    assert list(harness.incoming.iterdir()) == []
    assert harness.store.seen == []
    assert harness.access.open_count("MODALITY") == 0


def test_release_in_the_middle_of_a_store_leaves_no_file(harness: Harness,
                                                         running: Running) -> None:
    peer = Peer(running)
    peer.associate()
    peer.send(SendCommand(1, CStoreRQ(9, CT, INSTANCE)))
    store_pieces(peer, encoded_dataset()[:3000], 1000, last=False)
    wait_for_file(harness.incoming)
    peer.release()
    running.join()
    assert list(harness.incoming.iterdir()) == []
    assert harness.store.seen == []


def test_protocol_error_in_the_middle_of_a_store_leaves_no_file(
        harness: Harness, running: Running) -> None:
    peer = Peer(running)
    peer.associate()
    peer.send(SendCommand(1, CStoreRQ(9, CT, INSTANCE)))
    store_pieces(peer, encoded_dataset()[:3000], 1000, last=False)
    wait_for_file(harness.incoming)
    # A PDV on a context that was never accepted.
    running.sock.sendall(b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x04\x63\x00ab")
    running.sock.shutdown(socket.SHUT_WR)
    answer = Peer(running).read_to_eof()
    assert answer[:1] == b"\x07"
    running.join()
    assert list(harness.incoming.iterdir()) == []


# --- requests the engine side does not serve -------------------------------------------------


N_GET_RQ, N_ACTION_RQ = 0x0110, 0x0130


def test_unknown_request_on_a_storage_association_is_answered_0211(
        harness: Harness, running: Running) -> None:
    peer = Peer(running)
    peer.associate()
    peer.send(SendCommand(1, OtherCommand(N_GET_RQ, {
        0x0003: b"1.2.840.10008.5.1.4.1.1.2\0", MESSAGE_ID: us(5),
        DATA_SET_TYPE: us(0x0101), 0x1001: b"1.2.3\0"})))
    response = peer.command().command
    assert isinstance(response, OtherCommand)
    assert response.command_field == N_GET_RQ | 0x8000
    assert response.us(MESSAGE_ID_RESPONDED_TO) == 5
    assert response.us(STATUS) == 0x0211
    # The association goes on: an echo after it is served.
    peer.send(SendCommand(3, CEchoRQ(6)))
    assert peer.command().command == CEchoRSP(6, 0x0000)
    peer.release()
    running.join()


def test_unknown_request_with_a_dataset_is_answered_after_its_dataset(
        harness: Harness, running: Running) -> None:
    peer = Peer(running)
    peer.associate()
    peer.send(SendCommand(1, OtherCommand(N_ACTION_RQ, {
        0x0003: b"1.2.840.10008.1.20.1\0", MESSAGE_ID: us(8), DATA_SET_TYPE: us(0x0000),
        0x1001: b"1.2.3\0", 0x1008: us(1)})))
    store_pieces(peer, encoded_dataset(3000), 1000)
    response = peer.command().command
    assert isinstance(response, OtherCommand)
    assert (response.command_field, response.us(STATUS)) == (N_ACTION_RQ | 0x8000, 0x0211)
    assert response.us(MESSAGE_ID_RESPONDED_TO) == 8
    peer.release()
    running.join()
    assert harness.store.seen == [] and list(harness.incoming.iterdir()) == []


def test_c_cancel_gets_no_answer(harness: Harness, running: Running) -> None:
    peer = Peer(running)
    peer.associate()
    peer.send(SendCommand(1, OtherCommand(0x0FFF, {MESSAGE_ID_RESPONDED_TO: us(3),
                                                   DATA_SET_TYPE: us(0x0101)})))
    peer.send(SendCommand(3, CEchoRQ(4)))
    # The first answer is the echo's: the cancel was not answered.
    assert peer.command().command == CEchoRSP(4, 0x0000)
    peer.release()
    running.join()


def test_abort_from_another_thread_ends_the_connection(harness: Harness,
                                                       running: Running) -> None:
    peer = Peer(running)
    peer.associate()
    running.connection.abort()  # what the drain does past its grace
    assert any(isinstance(event, Aborted) for event in peer.events_until(Aborted))
    running.join()
    assert harness.access.open_count("MODALITY") == 0


# --- fuzz: whatever follows a valid association --------------------------------------------


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


STORE_COMMAND = encode_command(CStoreRQ(1, CT, INSTANCE))
PREFIXES = [
    b"",
    # A whole C-STORE command on context 1: the bytes that follow are its dataset's.
    b"\x04\x00" + (len(STORE_COMMAND) + 6).to_bytes(4, "big")
    + (len(STORE_COMMAND) + 2).to_bytes(4, "big") + b"\x01\x03" + STORE_COMMAND,
    b"\x04\x00\x00\x00\x01\x00",  # a P-DATA-TF header, its body up to the fuzzer
]


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(PREFIXES), tail=st.binary(max_size=600))
def test_arbitrary_bytes_after_association_end_cleanly(tmp_path: Path, prefix: bytes,
                                                       tail: bytes) -> None:
    harness = make_harness(tmp_path)
    errors = ErrorLog()
    logger = logging.getLogger("router.acceptor.connection")
    logger.addHandler(errors)
    try:
        running = Running(harness)
        peer = Peer(running)
        peer.associate()
        running.sock.sendall(prefix + tail)
        running.sock.shutdown(socket.SHUT_WR)
        peer.read_to_eof()
        running.join()
    finally:
        logger.removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == []  # no "unexpected error"
    assert list(harness.incoming.iterdir()) == []
    assert harness.access.open_count("MODALITY") == 0
