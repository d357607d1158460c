"""router/dicom/engine against real peers: a small blocking-socket SCP on the engine
receives from DCMTK storescu/echoscu, and a small SCU on the engine sends to DCMTK storescp;
in both directions the stored datasets are byte-identical to the sources."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, MRImageStorage
from pynetdicom import AE
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation, UserIdentityNegotiation
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router.dicom.engine import (
    AssociateAC,
    AssociateRQ,
    Association,
    AssociationAccepted,
    AssociationRequested,
    CEchoRQ,
    CEchoRSP,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    DataFragment,
    Event,
    PresentationContextAC,
    PresentationContextRQ,
    ReleaseConfirmed,
    ReleaseRequested,
    ReleaseRP,
    ReleaseRQ,
    RemoteProtocolError,
    SendCommand,
    SendData,
    UserInformation,
)
from tests.dcmtk import LOCALHOST, StoreSCP, run_echoscu, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, IMPLICIT_VR_LE, dataset_digest, write_instance

pytestmark = pytest.mark.integration

MAX_PDU = 16384  # small, so that a 100 KB dataset spans several PDUs
USER_INFO = UserInformation(max_length=MAX_PDU,
                            implementation_class_uid="1.2.826.0.1.3680043.9.7156.13",
                            implementation_version_name="ENGINE13")


# --- a ~60-line SCP on the engine -----------------------------------------------------------


def _open_part10(path: Path, command: CStoreRQ, syntax: str) -> BinaryIO:
    """A Part 10 file with its file meta written; the dataset follows as PDVs arrive."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = command.sop_class_uid
    meta.MediaStorageSOPInstanceUID = command.sop_instance_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = USER_INFO.implementation_class_uid
    out = path.open("wb")
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(DicomFileLike(out), meta, enforce_standard=True)
    return out


def _serve_association(conn: socket.socket, out_dir: Path, seen: list[AssociateRQ]) -> None:
    engine, current, store = Association.acceptor(), None, None
    while not engine.should_close:
        try:
            events = engine.receive_data(conn.recv(65536))
        except RemoteProtocolError as error:
            conn.sendall(error.to_send)
            return
        for event in events:
            if isinstance(event, AssociationRequested):
                seen.append(rq := event.rq)
                contexts = tuple(PresentationContextAC(c.context_id, 0, c.transfer_syntaxes[0])
                                 for c in rq.contexts)
                identity = rq.user_info.identity
                answer_info = replace(USER_INFO, roles=rq.user_info.roles, identity_response=(
                    b"welcome" if identity and identity.positive_response_requested else None))
                conn.sendall(engine.send(AssociateAC(rq.called_ae, rq.calling_ae, contexts,
                                                     answer_info)))
            elif isinstance(event, CommandReceived) and isinstance(event.command, CEchoRQ):
                answer = CEchoRSP(event.command.message_id, 0x0000)
                conn.sendall(engine.send(SendCommand(event.context_id, answer)))
            elif isinstance(event, CommandReceived) and isinstance(event.command, CStoreRQ):
                store = event.command
                path = out_dir / f"{store.sop_instance_uid}.dcm"
                current = _open_part10(path, store, engine.accepted[event.context_id])
            elif isinstance(event, DataFragment) and current is not None and store is not None:
                current.write(event.data)
                if event.last:
                    current.close()
                    answer = CStoreRSP(store.message_id, store.sop_class_uid,
                                       store.sop_instance_uid, 0x0000)
                    conn.sendall(engine.send(SendCommand(event.context_id, answer)))
            elif isinstance(event, ReleaseRequested):
                conn.sendall(engine.send(ReleaseRP()))


@pytest.fixture
def engine_scp(tmp_path: Path) -> Iterator[tuple[int, Path, list[AssociateRQ]]]:
    """An SCP on the engine serving associations one at a time in a thread: (port, the
    folder it stores into, the A-ASSOCIATE-RQs it accepted)."""
    out_dir = tmp_path / "engine-scp"
    out_dir.mkdir()
    listener = socket.create_server((LOCALHOST, 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    seen: list[AssociateRQ] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(30)
                _serve_association(conn, out_dir, seen)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], out_dir, seen
    stop.set()
    thread.join(10)
    listener.close()


def _sources(folder: Path) -> list[Path]:
    return [
        write_instance(folder, sop_class=CTImageStorage, transfer_syntax=EXPLICIT_VR_LE,
                       size_bytes=100_000),
        write_instance(folder, sop_class=MRImageStorage, transfer_syntax=IMPLICIT_VR_LE,
                       size_bytes=100_000),
        write_instance(folder, sop_class=CTImageStorage, transfer_syntax=IMPLICIT_VR_LE,
                       size_bytes=3_000),
    ]


EngineSCP = tuple[int, Path, list[AssociateRQ]]


def test_storescu_and_echoscu_to_an_scp_on_the_engine(tmp_path: Path,
                                                       engine_scp: EngineSCP) -> None:
    port, out_dir, _ = engine_scp
    echo = run_echoscu(LOCALHOST, port, called_ae="ENGINE", timeout=30)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    sources = _sources(tmp_path / "src")
    sent = run_storescu(sources, LOCALHOST, port, called_ae="ENGINE", timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    stored = sorted(dataset_digest(p) for p in out_dir.iterdir())
    assert stored == sorted(dataset_digest(p) for p in sources)


def test_pynetdicom_negotiates_roles_and_identity_with_the_engine(engine_scp: EngineSCP) -> None:
    """User identity (0x58/0x59) and SCP/SCU role selection (0x54) with a real peer."""
    port, _, seen = engine_scp
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    identity = UserIdentityNegotiation()
    identity.user_identity_type, identity.primary_field = 2, b"alice"
    identity.secondary_field, identity.positive_response_requested = b"s3cret", True
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CTImageStorage, True, True
    assoc = ae.associate(LOCALHOST, port, ae_title="ENGINE", ext_neg=[identity, role])
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.acceptor.user_identity is not None  # our 0x59 answer arrived
        assert assoc.acceptor.user_identity.server_response == b"welcome"
    finally:
        assoc.release()
    rq = seen[-1]
    assert rq.calling_ae == "PYNETDICOM" and rq.user_info.identity is not None
    assert (rq.user_info.identity.primary, rq.user_info.identity.secondary) == (b"alice",
                                                                                 b"s3cret")
    assert [(r.sop_class_uid, r.scu_role, r.scp_role) for r in rq.user_info.roles] == [
        (CTImageStorage, True, True)]


# --- a ~60-line SCU on the engine ---------------------------------------------------------


def _wait_for(sock: socket.socket, engine: Association, kind: type[Event]) -> Event:
    while True:
        for event in engine.receive_data(sock.recv(65536)):
            if isinstance(event, kind):
                return event
        if engine.should_close:
            raise AssertionError(f"association ended before {kind.__name__}")


def _dataset_offset(path: Path) -> int:
    head = path.read_bytes()[:144]
    return 144 + int.from_bytes(head[140:144], "little")  # (0002,0000) UL group length


def _send_files(port: int, called_ae: str, files: list[Path]) -> list[int]:
    metas = [read_file_meta_info(p) for p in files]
    pairs = sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas})
    contexts = tuple(PresentationContextRQ(2 * i + 1, sop, (ts,))
                     for i, (sop, ts) in enumerate(pairs))
    engine = Association.requestor()
    statuses = []
    with socket.create_connection((LOCALHOST, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(engine.send(AssociateRQ(called_ae, "ENGINESCU", contexts, USER_INFO)))
        _wait_for(sock, engine, AssociationAccepted)
        for message_id, (path, meta) in enumerate(zip(files, metas, strict=True), 1):
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            context_id = contexts[pairs.index(pair)].context_id
            assert context_id in engine.accepted, f"{pair} not accepted"
            command = CStoreRQ(message_id, pair[0], str(meta.MediaStorageSOPInstanceUID))
            sock.sendall(engine.send(SendCommand(context_id, command)))
            with path.open("rb") as source:
                source.seek(_dataset_offset(path))
                chunk = source.read(40_000)
                while chunk:
                    following = source.read(40_000)
                    sock.sendall(engine.send(SendData(context_id, chunk, last=not following)))
                    chunk = following
            response = _wait_for(sock, engine, CommandReceived)
            assert isinstance(response, CommandReceived)
            assert isinstance(response.command, CStoreRSP)
            assert response.command.message_id_responded == message_id
            statuses.append(response.command.status)
        sock.sendall(engine.send(ReleaseRQ()))
        _wait_for(sock, engine, ReleaseConfirmed)
    return statuses


def test_an_scu_on_the_engine_to_storescp(tmp_path: Path) -> None:
    sources = _sources(tmp_path / "src")
    with StoreSCP(tmp_path / "received", "STORESCP") as scp:
        statuses = _send_files(scp.port, scp.ae_title, sources)
        received = scp.received_files()
        log = scp.log()
    assert statuses == [0, 0, 0], log
    assert sorted(dataset_digest(p) for p in received) == sorted(
        dataset_digest(p) for p in sources), log
