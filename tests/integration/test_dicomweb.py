"""The DICOMweb (STOW-RS) destination against a real Orthanc with its DICOMweb plugin.

No router process: the tests drive workers.dicomweb_destination.DicomWebDestination as a
delivery thread would, and ask Orthanc's REST API what it stored. Answers Orthanc never gives
(409, 503, a FailedSOPSequence in a 200, a 202 with a WarningReason) come from a small STOW-RS
stub on loopback, which also shows what goes on the wire: the spooled file's bytes, unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import http.server
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage

from router.core.dicomweb_spec import DicomWebFields
from router.core.errors import DeliveryError
from router.core.messages import JobHeader
from tests.archive_servers import Orthanc
from tests.dcmtk import LOCALHOST, free_ports
from tests.dicom_samples import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_BASELINE,
    RLE_LOSSLESS,
    dataset_digest,
    write_instance,
)
from tests.pki import CertificateAuthority
from workers.destinations.dicomweb import DicomWebDestination

pytestmark = pytest.mark.integration

PLUGIN_GLOB = "/usr/share/orthanc/plugins/libOrthancDicomWeb*"
PASSWORD_ENV = "DICOMWEB_TEST_PASSWORD"
USERS = {"router": "correct horse battery staple"}


def dicomweb_plugin() -> str:
    found = sorted(glob.glob(PLUGIN_GLOB))
    if not found:
        raise RuntimeError("Orthanc's DICOMweb plugin is not installed "
                           "(scripts/install-test-deps.sh installs orthanc-dicomweb)")
    return found[0]


class WebOrthanc(Orthanc):
    """Orthanc with the DICOMweb plugin at /dicom-web/, optionally with users.

    Its own REST calls authenticate (the base class's do not). Orthanc's built-in HTTPS is
    not used: Debian's Orthanc 1.10.1 resets every request after the TLS handshake here, so
    the https tests use the STOW-RS stub below.
    """

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None) -> None:
        config: dict[str, Any] = {
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if users:
            config |= {"AuthenticationEnabled": True, "RegisteredUsers": dict(users)}
        super().__init__(workdir, config=config)
        self.auth = next(iter(users.items())) if users else None

    @property
    def dicomweb_url(self) -> str:
        return f"http://{LOCALHOST}:{self.http_port}/dicom-web"

    def rest(self, path: str, method: str = "GET",
             body: bytes | Mapping[str, Any] | Sequence[Any] | None = None, *,
             timeout: float = 30.0) -> Any:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        response = requests.request(method, f"http://{LOCALHOST}:{self.http_port}{path}",
                                    data=data, auth=self.auth, timeout=timeout)
        response.raise_for_status()  # an HTTPError is an OSError: _ready() waits on it
        if response.headers.get("Content-Type", "").startswith("application/json"):
            return response.json()
        return response.content

    def stored_file(self, sop_instance_uid: str) -> bytes:
        found = self.rest("/tools/find", "POST",
                          {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}})
        assert len(found) == 1, f"{sop_instance_uid}: Orthanc holds {found}"
        content: bytes = self.rest(f"/instances/{found[0]}/file")
        return content

    def instance_count(self) -> int:
        return len(self.rest("/instances"))


def web_config(url: str, **settings: Any) -> DicomWebFields:
    return DicomWebFields.model_validate({"type": "dicomweb", "url": url, **settings})


def job_for(path: Path, sop_instance_uid: str | None = None) -> JobHeader:
    """The job header the acceptor would have written for this file."""
    try:
        meta = read_file_meta_info(path)
        facts = (str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                 str(meta.TransferSyntaxUID))
    except Exception:  # not DICOM: a header as if the acceptor had been fooled
        facts = (CTImageStorage, "1.2.3.4", EXPLICIT_VR_LE)
    return JobHeader(
        job_id=uuid.uuid4().hex, calling_ae="MODALITY", called_ae="ROUTER",
        peer_address=LOCALHOST, peer_port=40000, sop_class_uid=facts[0],
        sop_instance_uid=sop_instance_uid or facts[1], transfer_syntax_uid=facts[2],
        size=path.stat().st_size, received_at=time.time(), rules=("all",),
        destinations=("web",))


def delivery_error(destination: DicomWebDestination, path: Path,
                   sop_instance_uid: str | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        destination.deliver(job_for(path, sop_instance_uid), path)
    return caught.value


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebOrthanc]:
    with WebOrthanc(tmp_path_factory.mktemp("orthanc-web")) as archive:
        yield archive


@pytest.fixture(scope="module")
def secured_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebOrthanc]:
    with WebOrthanc(tmp_path_factory.mktemp("orthanc-auth"), users=USERS) as archive:
        yield archive


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    return write_instance(tmp_path / "one", sop_class=CTImageStorage,
                          transfer_syntax=EXPLICIT_VR_LE)


# --- delivery to Orthanc ------------------------------------------------------------------------

SAMPLES = (  # (SOP class, transfer syntax, size): native, deflated and encapsulated
    (CTImageStorage, EXPLICIT_VR_LE, 10_000),
    (MRImageStorage, IMPLICIT_VR_LE, 10_000),
    (CTImageStorage, DEFLATED_EXPLICIT_VR_LE, 20_000),
    (SecondaryCaptureImageStorage, JPEG_BASELINE, 10_000),
    (SecondaryCaptureImageStorage, RLE_LOSSLESS, 10_000),
    (CTImageStorage, EXPLICIT_VR_LE, 3_500_000),  # larger than one read block: streamed
)


def test_delivers_instances_unchanged(orthanc: WebOrthanc, tmp_path: Path) -> None:
    paths = [write_instance(tmp_path / "src", sop_class=sop, transfer_syntax=ts,
                            size_bytes=size) for sop, ts, size in SAMPLES]
    destination = DicomWebDestination("web", web_config(orthanc.dicomweb_url))
    try:
        for path in paths:
            destination.deliver(job_for(path), path)
        destination.deliver(job_for(paths[0]), paths[0])  # again: at least once is harmless
    finally:
        destination.close()
    for path in paths:
        uid = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
        stored = tmp_path / "stored" / f"{uid}.dcm"
        stored.parent.mkdir(exist_ok=True)
        stored.write_bytes(orthanc.stored_file(uid))
        assert read_file_meta_info(stored).TransferSyntaxUID == \
            read_file_meta_info(path).TransferSyntaxUID
        assert dataset_digest(stored) == dataset_digest(path), uid


def test_not_dicom_is_a_permanent_failure(orthanc: WebOrthanc, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"this is not a DICOM file\n" * 100)
    destination = DicomWebDestination("web", web_config(orthanc.dicomweb_url))
    error = delivery_error(destination, garbage)
    destination.close()
    assert (error.reason, error.transient) == ("status", False)
    assert "HTTP 400" in str(error)


def test_truncated_instance_is_a_permanent_failure(
    orthanc: WebOrthanc, instance: Path, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(instance.read_bytes()[:300])
    destination = DicomWebDestination("web", web_config(orthanc.dicomweb_url))
    error = delivery_error(destination, truncated, job_for(instance).sop_instance_uid)
    destination.close()
    assert (error.reason, error.transient) == ("status", False)


def test_stopped_orthanc_is_a_transient_connection_failure(
    tmp_path: Path, instance: Path
) -> None:
    archive = WebOrthanc(tmp_path / "orthanc")
    archive.start()
    destination = DicomWebDestination("web", web_config(archive.dicomweb_url, timeout=5))
    try:
        destination.deliver(job_for(instance), instance)  # a pooled connection now exists
        archive.stop()
        error = delivery_error(destination, instance)
    finally:
        destination.close()
        archive.stop()
    assert (error.reason, error.transient) == ("connection", True)
    assert "/dicom-web/studies" in str(error)


def test_missing_file_is_left_to_the_caller(orthanc: WebOrthanc, tmp_path: Path) -> None:
    """The delivery thread turns FileNotFoundError into "withdrawn": it must come through."""
    destination = DicomWebDestination("web", web_config(orthanc.dicomweb_url))
    missing = tmp_path / "gone.dcm"
    job = job_for(write_instance(tmp_path, sop_class=CTImageStorage,
                                 transfer_syntax=EXPLICIT_VR_LE))
    with pytest.raises(FileNotFoundError):
        destination.deliver(job, missing)
    destination.close()


# --- basic authentication ---------------------------------------------------------------------


def test_basic_auth_delivers(secured_orthanc: WebOrthanc, instance: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, USERS["router"])
    config = web_config(secured_orthanc.dicomweb_url, auth="basic", username="router",
                        password_env=PASSWORD_ENV)
    destination = DicomWebDestination("web", config)
    destination.deliver(job_for(instance), instance)
    destination.close()
    uid = job_for(instance).sop_instance_uid
    assert secured_orthanc.stored_file(uid) == instance.read_bytes()


def test_basic_auth_from_a_file(secured_orthanc: WebOrthanc, instance: Path,
                                tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(USERS["router"] + "\n")  # as `echo ... > file` writes it
    config = web_config(secured_orthanc.dicomweb_url, auth="basic", username="router",
                        password_file=str(secret))
    destination = DicomWebDestination("web", config)
    destination.deliver(job_for(instance), instance)
    destination.close()


def test_wrong_password_pauses_the_destination(
    secured_orthanc: WebOrthanc, instance: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    config = web_config(secured_orthanc.dicomweb_url, auth="basic", username="router",
                        password_env=PASSWORD_ENV)
    before = secured_orthanc.instance_count()
    error = delivery_error(DicomWebDestination("web", config), instance)
    assert (error.reason, error.transient) == ("auth", True)
    assert "HTTP 401: credentials refused (check username/password_env)" in str(error)
    assert secured_orthanc.instance_count() == before


def test_no_credentials_for_a_secured_service(secured_orthanc: WebOrthanc,
                                              instance: Path) -> None:
    error = delivery_error(DicomWebDestination("web", web_config(secured_orthanc.dicomweb_url)),
                           instance)
    assert (error.reason, error.transient) == ("auth", True)
    assert "set auth" in str(error)


def test_unset_password_variable_pauses_the_destination(
    secured_orthanc: WebOrthanc, instance: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's mistake to fix, not the instance's fault: transient, nothing dead."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    config = web_config(secured_orthanc.dicomweb_url, auth="basic", username="router",
                        password_env=PASSWORD_ENV)
    error = delivery_error(DicomWebDestination("web", config), instance)
    assert (error.reason, error.transient) == ("auth", True)
    assert PASSWORD_ENV in str(error)


# --- answers Orthanc does not give: a STOW-RS stub ----------------------------------------------


@dataclass
class Exchange:
    """What the stub received, and what it answers with next."""

    status: int = 200
    delay: float = 0.0  # seconds before answering
    read_rate: float = 0.0  # bytes per second the request body is read at (0: at once)
    body: Any = None  # JSON-encoded when not bytes
    headers: dict[str, str] = field(default_factory=dict)
    password: str | None = None  # when set: 401 unless basic auth router:<password>
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)  # the bodies answered with a 2xx
    active: int = 0  # requests being answered now
    arrivals: list[int] = field(default_factory=list)  # `active` as each request arrived
    lock: threading.Lock = field(default_factory=threading.Lock)


class StowStub(http.server.ThreadingHTTPServer):
    """Answers every POST with ``exchange``; over TLS when given a server context."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__((LOCALHOST, 0), _StubHandler)
        self.exchange = Exchange()
        self.tls = tls

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
        sock.settimeout(10)  # the handshake runs in the handler's thread, with a deadline
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), \
            address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refuses the certificate is what some tests want

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOCALHOST}:{self.server_address[1]}/dicom-web"


def serve(server: StowStub) -> Iterator[StowStub]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class _StubHandler(http.server.BaseHTTPRequestHandler):
    server: StowStub
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        exchange = self.server.exchange
        with exchange.lock:
            exchange.active += 1
            exchange.arrivals.append(exchange.active)
        try:
            self._answer(exchange)
        finally:
            with exchange.lock:
                exchange.active -= 1

    def _answer(self, exchange: Exchange) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        received = self._read_body(length, exchange.read_rate)
        exchange.requests.append((self.path, dict(self.headers), received))
        time.sleep(exchange.delay)
        if exchange.password is not None and not self._authorized(exchange.password):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="stow"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = exchange.body
        payload = body if isinstance(body, bytes) else b"" if body is None else \
            json.dumps(body).encode()
        if 200 <= exchange.status < 300:
            exchange.stored.append(received)
        self.send_response(exchange.status)
        if body is not None and not isinstance(body, bytes):
            self.send_header("Content-Type", "application/dicom+json")
        for name, value in exchange.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self, length: int, rate: float) -> bytes:
        """The body, taken at `rate` bytes per second: a slow link's upload."""
        if not rate:
            return self.rfile.read(length)
        body = bytearray()
        while len(body) < length:
            block = self.rfile.read(min(length - len(body), 64 * 1024))
            if not block:
                break
            body += block
            time.sleep(len(block) / rate)
        return bytes(body)

    def _authorized(self, password: str) -> bool:
        token = base64.b64encode(f"router:{password}".encode()).decode()
        return self.headers.get("Authorization") == f"Basic {token}"

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[StowStub]:
    yield from serve(StowStub())


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"), "Test Web CA")


@pytest.fixture
def https_stub(authority: CertificateAuthority) -> Iterator[StowStub]:
    issued = authority.issue("stow", dns=("localhost",), ip=LOCALHOST, server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    yield from serve(StowStub(context))


def stow_answer(*, referenced: Sequence[tuple[str, int | None]] = (),
                failed: Sequence[tuple[str, int]] = ()) -> dict[str, Any]:
    """An application/dicom+json STOW-RS response (PS3.18 Table 10.5.3-1)."""
    def item(uid: str, reason_tag: str, code: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": [CTImageStorage]},
            "00081155": {"vr": "UI", "Value": [uid]},
        }
        if code is not None:
            out[reason_tag] = {"vr": "US", "Value": [code]}
        return out

    return {
        "00081198": {"vr": "SQ", "Value": [item(u, "00081197", c) for u, c in failed]},
        "00081199": {"vr": "SQ", "Value": [item(u, "00081196", c) for u, c in referenced]},
    }


def test_request_carries_the_file_as_is(stub: StowStub, instance: Path) -> None:
    uid = job_for(instance).sop_instance_uid
    stub.exchange.body = stow_answer(referenced=[(uid, None)])
    destination = DicomWebDestination("web", web_config(stub.url + "/"))
    destination.deliver(job_for(instance), instance)
    destination.close()
    path, headers, body = stub.exchange.requests[0]
    assert path == "/dicom-web/studies"
    media_type, *parameters = (p.strip() for p in headers["Content-Type"].split(";"))
    assert media_type == "multipart/related"
    params = dict(p.split("=", 1) for p in parameters)
    assert params["type"] == '"application/dicom"'
    boundary = params["boundary"].strip('"')
    assert headers["Accept"] == "application/dicom+json"
    assert "Transfer-Encoding" not in headers
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    assert body == head + instance.read_bytes() + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize(
    ("status", "answer", "expected"),
    [
        (200, "ours", None),
        (200, None, None),  # no body: nothing to contradict the status
        (202, "ours-warning", None),
        (200, "ours-failed-A700", ("status", True, "FailureReason 0xA700")),
        (200, "ours-failed-C000", ("status", False, "FailureReason 0xC000")),
        (202, "ours-failed-C000", ("status", False, "HTTP 202")),
        (200, "other", ("status", False, "does not list")),
        (409, "ours-failed-A900", ("status", False, "HTTP 409 FailureReason 0xA900")),
        (400, None, ("status", False, "HTTP 400")),
        (415, {"Message": "Unsupported media type"}, ("status", False, "Unsupported media")),
        # The service speaks of itself: the destination pauses (router/core/failures.py).
        (429, None, ("unavailable", True, "HTTP 429: too many requests")),
        (502, b"<html>nginx</html>", ("unavailable", True, "HTTP 502: bad gateway")),
        (503, None, ("unavailable", True, "HTTP 503: service unavailable")),
        (504, None, ("unavailable", True, "HTTP 504: gateway timeout")),
        (301, None, ("redirect", True, "HTTP 301 to http://elsewhere/dicom-web/studies: "
                                       "the url redirects (set the final URL)")),
        (403, None, ("auth", True, "HTTP 403: credentials refused")),
        # The instance's own trouble: retried or a dead letter, alone.
        (500, b"<html>oops</html>", ("status", True, "HTTP 500")),
        (408, None, ("status", True, "HTTP 408")),
        (404, None, ("status", False, "is url the DICOMweb service root")),
    ],
)
def test_answers_become_results(
    stub: StowStub, instance: Path, status: int, answer: Any,
    expected: tuple[str, bool, str] | None,
) -> None:
    uid = job_for(instance).sop_instance_uid
    canned = {
        "ours": stow_answer(referenced=[(uid, None)]),
        "ours-warning": stow_answer(referenced=[(uid, 0xB000)]),
        "ours-failed-A700": stow_answer(failed=[(uid, 0xA700)]),
        "ours-failed-C000": stow_answer(failed=[(uid, 0xC000)]),
        "ours-failed-A900": stow_answer(failed=[(uid, 0xA900)]),
        "other": stow_answer(referenced=[("1.2.3.4.5", None)]),
    }
    stub.exchange.status = status
    stub.exchange.body = canned.get(answer, answer) if isinstance(answer, str) else answer
    if status == 301:
        stub.exchange.headers = {"Location": "http://elsewhere/dicom-web/studies"}
    destination = DicomWebDestination("web", web_config(stub.url))
    try:
        if expected is None:
            destination.deliver(job_for(instance), instance)
            return
        error = delivery_error(destination, instance)
    finally:
        destination.close()
    reason, transient, text = expected
    assert (error.reason, error.transient) == (reason, transient)
    assert text in str(error)


@pytest.mark.parametrize(("header", "expected"),
                         [("7", 7.0), ("999999", 3600.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
                          ("soon", 0.0)])
def test_retry_after_in_seconds_is_kept(stub: StowStub, instance: Path, header: str,
                                        expected: float) -> None:
    stub.exchange.status = 503
    stub.exchange.headers = {"Retry-After": header}
    destination = DicomWebDestination("web", web_config(stub.url))
    error = delivery_error(destination, instance)
    destination.close()
    assert (error.reason, error.retry_after) == ("unavailable", expected)


def test_no_answer_in_time_is_a_transient_connection_failure(stub: StowStub,
                                                             instance: Path) -> None:
    stub.exchange.delay = 2.0
    destination = DicomWebDestination("web", web_config(stub.url, timeout=0.5))
    error = delivery_error(destination, instance)
    destination.close()
    assert (error.reason, error.transient) == ("connection", True)
    assert "did not take the instance and answer within its timeout of 0.5 s" in str(error)


def test_a_large_instance_has_time_to_go_over_a_slow_link(stub: StowStub,
                                                          tmp_path: Path) -> None:
    """`timeout` was one deadline for the whole exchange, the upload included: an instance
    that takes longer than it to upload was cut off at every attempt, and the destination
    paused for ever (a 4 GB whole-slide image needs 67 MB/s to go in the default 60 s).
    The deadline allows one second per MB of the instance on top of `timeout`."""
    path = write_instance(tmp_path / "big", sop_class=CTImageStorage,
                          transfer_syntax=EXPLICIT_VR_LE, size_bytes=2_000_000)
    stub.exchange.read_rate = 2_000_000  # about 1 s for the body: past the 0.5 s timeout
    stub.exchange.body = stow_answer(referenced=[(job_for(path).sop_instance_uid, None)])
    destination = DicomWebDestination("web", web_config(stub.url, timeout=0.5))
    destination.deliver(job_for(path), path)  # the deadline: 0.5 s + 2 s for 2 MB
    destination.close()
    assert len(stub.exchange.stored) == 1
    assert path.read_bytes() in stub.exchange.stored[0]


class DrippingServer:
    """A real HTTP server that reads the request, then answers one byte every `interval`
    seconds: each read gets a byte well within requests' per-read timeout. The whole answer
    (a valid 200 with no body) takes `len(ANSWER) * interval` seconds, so a client without
    a total deadline ends, late, with a success."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Slow: " + b"a" * 12 + b"\r\n\r\n"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.listener = socket.create_server((LOCALHOST, 0))
        self.connections = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.listener.getsockname()[1]}/dicom-web"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.connections += 1
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            for byte in self.ANSWER:
                if self.stopped.wait(self.interval):
                    return
                conn.sendall(bytes([byte]))

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def test_an_answer_dripped_past_the_timeout_is_cut_off(instance: Path) -> None:
    """requests' timeout is per read: a server dripping its answer a byte at a time held a
    delivery for ever. The destination's timeout is one deadline for the whole exchange:
    past it the connection is closed and the destination pauses (a transient connection
    failure naming it and the deadline)."""
    server = DrippingServer(interval=0.2)  # 60 bytes: about 12 s for the whole answer
    destination = DicomWebDestination("cloud", web_config(server.url, timeout=1.0))
    try:
        error = delivery_error(destination, instance)
    finally:
        destination.close()
        server.close()
    assert (error.reason, error.transient) == ("connection", True)
    assert "cloud" in str(error) and "within its timeout of 1 s" in str(error)
    assert server.connections == 1


class FloodingHandler(http.server.BaseHTTPRequestHandler):
    """Takes the request, then answers 200 with a body of FLOOD bytes (or until the client
    hangs up), declaring its length or not (an endless body ends when the connection does)."""

    server: FloodingServer
    protocol_version = "HTTP/1.1"
    FLOOD = 64 * 1024**2

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        if self.server.declare:
            self.send_header("Content-Length", str(self.FLOOD))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        block = b" " * 65536
        with contextlib.suppress(OSError):  # the client hung up: what the test wants
            while self.server.sent < self.FLOOD:
                self.wfile.write(block)
                self.server.sent += len(block)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FloodingServer(http.server.ThreadingHTTPServer):
    def __init__(self, declare: bool) -> None:
        super().__init__((LOCALHOST, 0), FloodingHandler)
        self.declare = declare
        self.sent = 0

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.server_address[1]}/dicom-web"


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "endless"])
def test_an_answer_past_max_answer_bytes_pauses_and_is_cut_off(instance: Path,
                                                              declare: bool) -> None:
    """A server (or anything at the url) that answers with a body of 64 MiB, declared or
    endless, was read whole into the worker's memory (and, unparsable, counted as
    delivered). Past max_answer_bytes the answer is cut off, the connection closed, and
    the destination pauses (the service's fault, not the instance's), naming the cap."""
    server = FloodingServer(declare)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    destination = DicomWebDestination("cloud", web_config(server.url, max_answer_bytes=65536))
    try:
        error = delivery_error(destination, instance)
        assert (error.reason, error.transient) == ("answer_too_large", True)
        assert "cloud" in str(error) and "max_answer_bytes (65536 bytes)" in str(error)
    finally:
        destination.close()
        server.shutdown()
        server.server_close()  # joins the handler: it saw the hang-up, or sent it all
    assert server.sent < FloodingHandler.FLOOD  # the client never read it to its end


def test_refused_connection_reads_well(instance: Path) -> None:
    port = free_ports(1)[0]
    destination = DicomWebDestination("web", web_config(f"http://{LOCALHOST}:{port}/dicom-web"))
    error = delivery_error(destination, instance)
    assert (error.reason, error.transient) == ("connection", True)
    assert str(error).endswith("Failed to establish a new connection: "
                               "[Errno 111] Connection refused"), str(error)


def test_bearer_token_is_read_at_each_request(stub: StowStub, instance: Path,
                                              tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    config = web_config(stub.url, auth="bearer", token_file=str(token))
    destination = DicomWebDestination("web", config)
    destination.deliver(job_for(instance), instance)
    token.write_text("rotated-token")
    destination.deliver(job_for(instance), instance)
    destination.close()
    sent = [headers["Authorization"] for _, headers, _ in stub.exchange.requests]
    assert sent == ["Bearer first-token", "Bearer rotated-token"]


def test_unreadable_token_file_pauses_the_destination(stub: StowStub, instance: Path,
                                                      tmp_path: Path) -> None:
    config = web_config(stub.url, auth="bearer", token_file=str(tmp_path / "absent"))
    error = delivery_error(DicomWebDestination("web", config), instance)
    assert (error.reason, error.transient) == ("auth", True)
    assert str(error) == f"cannot read the bearer token from file {tmp_path / 'absent'}: " \
        "No such file or directory"
    assert stub.exchange.requests == []


# --- https ------------------------------------------------------------------------------------


def test_https_verified_against_ca(https_stub: StowStub, authority: CertificateAuthority,
                                   instance: Path) -> None:
    destination = DicomWebDestination("web", web_config(https_stub.url,
                                                         ca=str(authority.cert_path)))
    destination.deliver(job_for(instance), instance)
    destination.close()
    assert len(https_stub.exchange.requests) == 1


def test_https_with_an_untrusted_certificate_fails_tls(
    https_stub: StowStub, instance: Path, tmp_path: Path
) -> None:
    other = CertificateAuthority(tmp_path / "pki", "Another CA")
    config = web_config(https_stub.url, ca=str(other.cert_path))
    error = delivery_error(DicomWebDestination("web", config), instance)
    assert (error.reason, error.transient) == ("tls", True)
    assert "failed: unknown_ca" in str(error)
    assert "certificate verify failed" in str(error)
    assert https_stub.exchange.requests == []


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_https_without_verification(https_stub: StowStub, instance: Path) -> None:
    destination = DicomWebDestination("web", web_config(https_stub.url, verify_tls=False))
    destination.deliver(job_for(instance), instance)
    destination.close()
    assert len(https_stub.exchange.requests) == 1


# --- through the router -------------------------------------------------------------------------

def test_the_router_delivers_to_a_dicomweb_destination(
        secured_orthanc: WebOrthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real router process with a dicomweb destination (basic auth, password from the
    environment): every instance storescu sends arrives in Orthanc, byte-identical."""
    from pydicom import dcmread

    from tests.dcmtk import run_storescu
    from tests.dicom_samples import dataset_digest, generate_mixed_set
    from tests.integration.router_process import RouterProcess, wait_for

    monkeypatch.setenv(PASSWORD_ENV, USERS["router"])  # inherited by the router process
    before = secured_orthanc.instance_count()
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"web": {"type": "dicomweb", "url": secured_orthanc.dicomweb_url,
                                 "auth": "basic", "username": "router",
                                 "password_env": PASSWORD_ENV}},
        "rules": [{"name": "all", "forward": ["web"]}]}).start()
    try:
        sources = generate_mixed_set(tmp_path / "src", 6, syntaxes=(EXPLICIT_VR_LE,))
        sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: secured_orthanc.instance_count() == before + 6, timeout=60), \
            router.log()[-2000:]
        for path in sources:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            stored = tmp_path / f"{uid}.stored.dcm"
            stored.write_bytes(secured_orthanc.stored_file(uid))
            assert dataset_digest(stored) == dataset_digest(path)
        assert router.metric("dicom_router_instances_forwarded_total", destination="web",
                             result="delivered") == 6
    finally:
        router.stop()


@pytest.mark.parametrize("outage", ["503", "401"])
def test_a_service_outage_pauses_the_destination_and_loses_nothing(
        stub: StowStub, tmp_path: Path, outage: str) -> None:
    """A service behind a proxy that answers 503, or that refuses the router's credentials
    until an operator fixes the password file: the destination pauses (destination_up 0,
    no attempt spent) well past max_attempts, and every acknowledged instance arrives once
    the service is back; nothing becomes a dead letter."""
    from pydicom import dcmread

    from tests.dcmtk import run_storescu
    from tests.dicom_samples import generate_mixed_set
    from tests.integration.router_process import RouterProcess, wait_for

    secret = tmp_path / "password"
    secret.write_text("old password\n")
    web: dict[str, Any] = {"type": "dicomweb", "url": stub.url,
                           "retry": {"initial_delay": 0.5, "max_delay": 2, "max_attempts": 2}}
    if outage == "503":
        stub.exchange.status = 503
    else:
        stub.exchange.password = "new password"
        web |= {"auth": "basic", "username": "router", "password_file": str(secret)}
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"web": web}, "rules": [{"name": "all", "forward": ["web"]}]}).start()

    def because() -> str:
        row = router.status()["broker"]["destinations"]["web"]
        return "" if row["up"] else str(row["backing_off_because"])

    try:
        sources = generate_mixed_set(tmp_path / "src", 4, syntaxes=(EXPLICIT_VR_LE,))
        sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        # Probes go on well past max_attempts (2) with nothing given up.
        assert wait_for(lambda: len(stub.exchange.requests) >= 5, timeout=30), router.log()
        expected = {"503": "unavailable: web answered HTTP 503: service unavailable",
                    "401": "auth: web answered HTTP 401: credentials refused "
                           "(check username/password_file)"}[outage]
        assert wait_for(lambda: because().startswith(expected), timeout=10), because()
        assert wait_for(lambda: router.metric("dicom_router_destination_up",
                                              destination="web") == 0, timeout=10)
        assert not list((router.spool / "dead-letters").glob("*.json"))

        assert not stub.exchange.stored
        stub.exchange.status = 200  # the service is back, or the operator fixed the password
        secret.write_text("new password\n")
        assert wait_for(lambda: router.metric("dicom_router_instances_forwarded_total",
                                              destination="web", result="delivered") == 4,
                        timeout=30), router.log()[-3000:]
        for path in sources:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID).encode()
            assert any(uid in body for body in stub.exchange.stored), path
        assert not list((router.spool / "dead-letters").glob("*.json"))
    finally:
        router.stop()


def test_a_password_file_gone_at_delivery_pauses_the_destination(
        stub: StowStub, tmp_path: Path) -> None:
    """The password file is there at start, then removed (a secret remounted): the site's
    credentials, not the instances. The destination pauses with reason auth naming the file
    and what is wrong (queue kept, no attempt spent, no dead letter), like a 401, and every
    instance arrives once the file is back."""
    from tests.dcmtk import run_storescu
    from tests.dicom_samples import generate_mixed_set
    from tests.integration.router_process import RouterProcess, wait_for

    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    stub.exchange.password = "s3cret"
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"web": {
            "type": "dicomweb", "url": stub.url, "auth": "basic", "username": "router",
            "password_file": str(secret),
            "retry": {"initial_delay": 0.2, "max_delay": 0.5, "max_attempts": 1}}},
        "rules": [{"name": "all", "forward": ["web"]}]}).start()

    def because() -> str:
        row = router.status()["broker"]["destinations"]["web"]
        return "" if row["up"] else str(row["backing_off_because"])

    try:
        secret.unlink()
        sources = generate_mixed_set(tmp_path / "src", 3, syntaxes=(EXPLICIT_VR_LE,))
        sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        expected = f"auth: cannot read the password from file {secret}: No such file or directory"
        assert wait_for(lambda: because() == expected, timeout=15), (because(), router.log())
        # Probes go on past max_attempts (1) with nothing given up and nothing sent.
        retries = ("dicom_router_retries_total", {"destination": "web", "reason": "auth"})
        assert wait_for(lambda: router.metric(retries[0], **retries[1]) >= 3, timeout=15)
        assert not list((router.spool / "dead-letters").glob("*.json"))
        assert stub.exchange.requests == []

        secret.write_text("s3cret\n")
        assert wait_for(lambda: len(stub.exchange.stored) == 3, timeout=30), router.log()[-3000:]
        assert not list((router.spool / "dead-letters").glob("*.json"))
    finally:
        router.stop()


def test_a_down_service_is_probed_with_one_request_at_a_time(
        stub: StowStub, tmp_path: Path) -> None:
    """A service that answers 503 for a while: at each pause's end the router sent up to
    max_parallel (4) requests at once. It probes with one delivery (one request at a time)
    while the service is down, and opens up again once the service takes an instance;
    every instance then arrives and nothing becomes a dead letter."""
    from tests.dcmtk import run_storescu
    from tests.dicom_samples import generate_mixed_set
    from tests.integration.router_process import RouterProcess, wait_for

    stub.exchange.status = 503
    stub.exchange.delay = 0.3  # requests sent together overlap at the stub
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"web": {
            "type": "dicomweb", "url": stub.url, "max_parallel": 4,
            "retry": {"initial_delay": 0.2, "max_delay": 0.4, "max_attempts": 1}}},
        "rules": [{"name": "all", "forward": ["web"]}]}).start()
    exchange = stub.exchange
    try:
        sources = generate_mixed_set(tmp_path / "src", 8, syntaxes=(EXPLICIT_VR_LE,))
        sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: router.metric("dicom_router_destination_up",
                                              destination="web") == 0, timeout=15)
        assert wait_for(lambda: exchange.active == 0, timeout=15)  # what went out before
        probed = len(exchange.arrivals)
        assert wait_for(lambda: len(exchange.arrivals) >= probed + 5, timeout=30), router.log()
        assert max(exchange.arrivals[probed:]) == 1, exchange.arrivals
        assert not exchange.stored

        exchange.status = 200  # the service is back
        assert wait_for(lambda: len(exchange.stored) == 8, timeout=30), router.log()[-3000:]
        assert not list((router.spool / "dead-letters").glob("*.json"))
    finally:
        router.stop()
