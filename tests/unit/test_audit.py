"""The audit trail: config, schema-valid JSON lines, the per-study tally, syslog; never raising."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from router.acceptor.access import AccessPolicy
from router.acceptor.admission import Admission
from router.acceptor.association_events import AssociationEvents
from router.acceptor.session import AssociationSession
from router.audit import trail as audit_trail
from router.audit.syslog_sender import (
    SyslogConfig,
    SyslogSender,
    format_rfc5424,
    octet_counted,
)
from router.audit.trail import AuditTrail, TransferTally
from router.core import metrics
from router.core.audit_config import AuditConfig
from router.core.config import ListenConfig, SpoolConfig, parse_config
from router.core.tls import check_contexts
from router.core.tls_dates import expiry_warnings
from tests.pki import CertificateAuthority

from .audit_schema import CT, MR, STUDY, assert_valid, schema_validator


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    return schema_validator()


# ---------------------------------------------------------------- configuration


def test_config_defaults_and_embedding() -> None:
    class Top(BaseModel):
        audit: AuditConfig = AuditConfig()

    assert Top().audit.enabled is False
    top = Top.model_validate({"audit": {
        "enabled": True, "path": "/var/log/x/audit.jsonl",
        "syslog": {"host": "arr.example", "transport": "tls"}}})
    assert top.audit.syslog is not None
    assert top.audit.syslog.resolved_port == 6514
    assert top.audit.syslog.facility == 10
    assert top.audit.syslog.app_name == "dicom-router"
    assert SyslogConfig(host="h", transport="udp").resolved_port == 514


@pytest.mark.parametrize(("data", "expected"), [
    ({"enabeld": True}, "enabeld"),
    ({"path": "."}, "is a directory"),
    ({"source_id": "  "}, "without control characters"),
    ({"syslog": {"host": "h", "transport": "udp", "ca": "/etc/hostname"}},
     "apply only to transport: tls"),
    ({"syslog": {"host": "h", "transport": "tls", "key": "/etc/hostname"}}, "key needs cert"),
    ({"syslog": {"host": "h", "transport": "tls", "ca": "/nonexistent/ca.pem"}},
     "is not a file"),
    ({"syslog": {"host": "h", "transport": "smtp"}}, "'udp', 'tcp' or 'tls'"),
    ({"syslog": {"host": "h", "transport": "udp", "app_name": "my app"}}, "RFC 5424"),
    ({"syslog": {"host": "h", "transport": "udp", "facility": 24}}, "less than or equal"),
    ({"syslog": {"host": "h", "transport": "udp", "queue_size": 0}}, "greater than"),
])
def test_config_errors_name_the_problem(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        AuditConfig.model_validate(data)
    assert expected in str(info.value)


# ---------------------------------------------------------------- the trail


def event_id(message: dict[str, Any]) -> str:
    return str(message["AuditMessage"]["EventIdentification"]["EventID"]["csd-code"])


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_trail_writes_one_valid_json_line_per_event(tmp_path: Path, validator: Any) -> None:
    path = tmp_path / "logs" / "audit.jsonl"  # the folder is created
    with AuditTrail(AuditConfig(enabled=True, path=path), "ROUTER") as trail:
        trail.application_started()
        trail.association_accepted("MOD", "ROUTER", "127.0.0.1", tls_certificate="CN=mod")
        trail.association_rejected("BAD", "ROUTER", "127.0.0.2", "calling AE not recognised")
        trail.association_rejected("MOD", "ROUTER", "127.0.0.1", "temporary congestion",
                                   security=False)
        trail.instances_transferred("MOD", "ROUTER", "127.0.0.1", STUDY, {CT: 5}, True)
        trail.security_alert("bad_certificate", "handshake failed", "127.0.0.3")
        trail.application_stopped()
    lines = read_lines(path)
    assert [m["AuditMessage"]["EventIdentification"]["EventID"]["csd-code"] for m in lines] == [
        "110100", "110114", "110113", "110114", "110104", "110113", "110100"]
    outcomes = [m["AuditMessage"]["EventIdentification"]["EventOutcomeIndicator"] for m in lines]
    assert outcomes == ["0", "0", "4", "4", "0", "4", "0"]
    for message in lines:
        assert_valid(validator, message)
    assert path.stat().st_mode & 0o777 == 0o640
    trail.application_started()  # after close: ignored, no error
    assert len(read_lines(path)) == 7


def test_source_id_defaults_to_the_ae_title(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    AuditTrail(AuditConfig(enabled=True, path=path), "ROUTER_AE").application_started()
    AuditTrail(AuditConfig(enabled=True, path=path, source_id="site-router-1"),
               "ROUTER_AE").application_started()
    sources = [m["AuditMessage"]["AuditSourceIdentification"]["AuditSourceID"]
               for m in read_lines(path)]
    assert sources == ["ROUTER_AE", "site-router-1"]


def test_disabled_trail_writes_nothing(tmp_path: Path) -> None:
    trail = AuditTrail(AuditConfig(enabled=False, path=tmp_path / "a.jsonl"), "ROUTER")
    trail.application_started()
    trail.instances_transferred("A", "B", "127.0.0.1", STUDY, {CT: 1}, True)
    trail.close()
    assert not (tmp_path / "a.jsonl").exists()
    assert trail.enabled is False


def _audit_failures(sink: str) -> float:
    return float(metrics.AUDIT_FAILURES.labels(sink)._value.get())


def test_broken_path_warns_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = blocker / "audit.jsonl"  # its parent is a file: every append fails
    trail = AuditTrail(AuditConfig(enabled=True, path=path), "ROUTER")
    lost_before = _audit_failures("file")
    with caplog.at_level(logging.INFO, logger="router.audit.trail"):
        for _ in range(5):
            trail.instances_transferred("MOD", "ROUTER", "127.0.0.1", STUDY, {CT: 1}, True,
                                        patient_id="SECRET-PID")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert _audit_failures("file") == lost_before + 5  # each lost message, not the warning
        assert str(path) in warnings[0].getMessage()
        blocker.unlink()  # the disk comes back
        trail.application_stopped()
    assert len(read_lines(path)) == 1
    assert any("written again" in r.getMessage() for r in caplog.records)
    assert "SECRET-PID" not in caplog.text and STUDY not in caplog.text
    trail.close()


def test_a_message_after_close_is_counted_lost_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trail = AuditTrail(AuditConfig(enabled=True, path=tmp_path / "a.jsonl"), "ROUTER")
    trail.close()
    lost_before = _audit_failures("file")
    with caplog.at_level(logging.WARNING, logger="router.audit.trail"):
        for _ in range(3):
            trail.instances_transferred("MOD", "ROUTER", "127.0.0.1", STUDY, {CT: 1}, True)
    assert _audit_failures("file") == lost_before + 3
    assert [r.getMessage() for r in caplog.records if "closed" in r.getMessage()] != []
    assert len(caplog.records) == 1 and STUDY not in caplog.text


def test_log_rotation_starts_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(enabled=True, path=path, fsync=True), "ROUTER")
    trail.application_started()
    path.rename(tmp_path / "audit.jsonl.1")
    trail.application_stopped()
    trail.close()
    assert len(read_lines(tmp_path / "audit.jsonl.1")) == 1
    assert len(read_lines(path)) == 1


def test_concurrent_callers_never_interleave_lines(tmp_path: Path, validator: Any) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(enabled=True, path=path), "ROUTER")
    many = {f"1.2.840.10008.5.1.4.1.1.{i}": i for i in range(1, 60)}  # long lines

    def work() -> None:
        for _ in range(50):
            trail.instances_transferred("MOD", "ROUTER", "127.0.0.1", STUDY, many, True)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trail.close()
    lines = read_lines(path)
    assert len(lines) == 400
    assert_valid(validator, lines[-1])


def test_a_failing_builder_is_contained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("patient SECRET")

    monkeypatch.setattr(audit_trail, "user_authentication", boom)
    trail = AuditTrail(AuditConfig(enabled=True, path=tmp_path / "a.jsonl"), "ROUTER")
    trail.association_accepted("MOD", "ROUTER", "127.0.0.1")
    assert "RuntimeError" in caplog.text and "SECRET" not in caplog.text


# ---------------------------------------------------------------- per-study tally


def test_tally_is_due_after_its_interval_since_the_first_unflushed_instance(
    tmp_path: Path,
) -> None:
    trail = AuditTrail(AuditConfig(enabled=True, path=tmp_path / "a.jsonl"), "ROUTER")
    tally = TransferTally(interval=60)
    assert not tally.due(time.monotonic() + 3600)  # nothing counted: nothing to write
    tally.add(STUDY, CT, True)
    start = time.monotonic()
    assert not tally.due(start + 30)
    assert tally.due(start + 61)
    tally.flush(trail, "MOD", "ROUTER", "127.0.0.1")
    assert not tally.due(start + 3600)  # flushed: the clock starts again at the next add
    assert len(read_lines(tmp_path / "a.jsonl")) == 1


def test_an_open_associations_tally_is_flushed_once_due(tmp_path: Path) -> None:
    trail = AuditTrail(AuditConfig(enabled=True, path=tmp_path / "a.jsonl"), "ROUTER")
    admission = Admission(SpoolConfig(path=tmp_path, min_free_bytes=0, min_free_percent=0))
    events = AssociationEvents(AccessPolicy(ListenConfig()), admission, trail)
    session = AssociationSession("MOD", "ROUTER", "127.0.0.1", 104)
    events.accepted(session)
    assert session.tally is not None
    session.tally.add(STUDY, CT, True)
    events.flush_due_tallies(time.monotonic())  # not due yet
    assert [event_id(m) for m in read_lines(tmp_path / "a.jsonl")] == ["110114"]
    events.flush_due_tallies(time.monotonic() + audit_trail.TALLY_FLUSH_SECONDS)
    assert [event_id(m) for m in read_lines(tmp_path / "a.jsonl")] == ["110114", "110104"]
    events.settle(session)  # nothing left to write at the end
    assert len(read_lines(tmp_path / "a.jsonl")) == 2


def test_tally_gives_one_message_per_study_and_outcome(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(AuditConfig(enabled=True, path=path), "ROUTER")
    tally = TransferTally()
    for _ in range(10):
        tally.add("1.2.3", CT, True, patient_id="P1")
    tally.add("1.2.3", MR, True)
    tally.add("1.2.3", CT, False)
    tally.add("1.2.4", MR, True)
    assert len(tally) == 3
    tally.flush(trail, "MOD", "ROUTER", "127.0.0.1")
    assert len(tally) == 0
    tally.flush(trail, "MOD", "ROUTER", "127.0.0.1")  # nothing more
    summary = []
    for line in read_lines(path):
        message = line["AuditMessage"]
        study = message["ParticipantObjectIdentification"][0]
        counts = {c["UID"]: c["NumberOfInstances"]
                  for c in study["ParticipantObjectDescription"][0]["SOPClass"]}
        patients = [o["ParticipantObjectID"] for o in message["ParticipantObjectIdentification"]
                    if o["ParticipantObjectTypeCode"] == "1"]
        summary.append((study["ParticipantObjectID"],
                        message["EventIdentification"]["EventOutcomeIndicator"], counts,
                        patients))
    assert summary == [
        ("1.2.3", "0", {CT: 10, MR: 1}, ["P1"]),
        ("1.2.3", "4", {CT: 1}, ["P1"]),
        ("1.2.4", "0", {MR: 1}, []),
    ]


# ---------------------------------------------------------------- syslog


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_rfc5424_format_and_framing() -> None:
    from datetime import UTC, datetime

    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    message = format_rfc5424('{"a":1}', facility=10, severity=5, app_name="dicom-router",
                             msgid="DICOM+AUDIT+JSON", hostname="host one", procid="42",
                             timestamp=when)
    assert message == (b'<85>1 2024-05-06T07:08:09.123456Z hostone dicom-router 42 '
                       b'DICOM+AUDIT+JSON - {"a":1}')
    utf8 = format_rfc5424("\u00e9", facility=10, severity=4, app_name="a", msgid="m",
                          hostname="", procid=None, timestamp=when)
    assert utf8.endswith(b"Z - a - m - \xef\xbb\xbf\xc3\xa9")  # empty: "-"; UTF-8: BOM
    assert octet_counted(b"abc") == b"3 abc"


def test_unreachable_syslog_never_blocks_or_raises(
    tmp_path: Path, refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    config = AuditConfig(enabled=True, path=tmp_path / "a.jsonl", syslog=SyslogConfig(
        host="127.0.0.1", port=refused_port, transport="tcp", timeout=1.0))
    trail = AuditTrail(config, "ROUTER")
    started = time.monotonic()
    for _ in range(200):
        trail.instances_transferred("MOD", "ROUTER", "127.0.0.1", STUDY, {CT: 1}, True,
                                    patient_id="SECRET-PID")
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 5
    while "failed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    trail.close(timeout=0.5)
    assert time.monotonic() - started < 3.0
    assert trail.syslog_dropped == 200
    assert len(read_lines(tmp_path / "a.jsonl")) == 200  # the file has everything
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # The failure once (not per message), and at the stop what only the file has.
    assert len(warnings) == 2 and "failed" in warnings[0], warnings
    assert "200 audit message(s) not sent to syslog" in warnings[1]
    assert "SECRET-PID" not in caplog.text and STUDY not in caplog.text


def test_unresolvable_syslog_host_does_not_raise(tmp_path: Path) -> None:
    config = AuditConfig(enabled=True, path=tmp_path / "a.jsonl", syslog=SyslogConfig(
        host="no-such-host.invalid", transport="udp", timeout=0.5))
    trail = AuditTrail(config, "ROUTER")
    trail.application_started()
    trail.close(timeout=0.2)
    assert len(read_lines(tmp_path / "a.jsonl")) == 1


def test_queue_is_bounded_and_drops_the_oldest(refused_port: int) -> None:
    sender = SyslogSender(SyslogConfig(host="127.0.0.1", port=refused_port, transport="tcp",
                                       queue_size=5, timeout=0.5))
    lost_before = _audit_failures("syslog")
    try:
        for index in range(100):
            sender.submit(b"message %d" % index)
        assert sender.pending() <= 5
        assert sender.dropped >= 95
        assert sender.sent == 0
        with sender._cond:  # the newest are kept
            assert list(sender._queue)[-1] == b"message 99"
    finally:
        sender.close(timeout=0.1)
    assert sender.pending() == 0
    assert sender.dropped == 100
    assert _audit_failures("syslog") == lost_before + 100


def test_oversized_udp_message_is_dropped_not_retried() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        sender = SyslogSender(SyslogConfig(host="127.0.0.1", port=receiver.getsockname()[1],
                                           transport="udp"))
        sender.submit(b"x" * 70_000)
        sender.submit(b"<85>1 - - - - - - small")
        assert receiver.recv(2048) == b"<85>1 - - - - - - small"
        sender.close()
    assert (sender.sent, sender.dropped) == (1, 1)


def test_a_refused_association_names_the_peer_certificate(tmp_path: Path,
                                                           validator: Any) -> None:
    path = tmp_path / "audit.jsonl"
    peer = "CN=ct1; issuer=CN=Site CA; sha256=0A:1B"
    with AuditTrail(AuditConfig(enabled=True, path=path), "ROUTER") as trail:
        trail.association_rejected("CT2", "ROUTER", "127.0.0.1", "certificate ct1 may not "
                                   "use calling AE 'CT2'", tls_certificate=peer)
        trail.association_rejected("CT2", "ROUTER", "127.0.0.1", "temporary congestion",
                                   security=False, tls_certificate=peer)
    for message in read_lines(path):
        assert_valid(validator, message)
        (remote,) = [p for p in message["AuditMessage"]["ActiveParticipant"]
                     if p["UserID"] == "CT2"]
        assert remote["UserName"] == peer


class _TlsSyslogServer:
    """A TLS syslog receiver that requires a client certificate and notes each connection's
    common name."""

    def __init__(self, ca: CertificateAuthority) -> None:
        server = ca.issue("syslog", dns=("localhost",), ip="127.0.0.1", server=True)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(server.cert, server.key)
        self.context.load_verify_locations(cafile=ca.cert_path)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.clients: list[str] = []
        self.received = b""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError), self.context.wrap_socket(raw, server_side=True) as tls:
            cert = tls.getpeercert() or {}
            self.clients.append(dict(r[0] for r in cert.get("subject", ()))["commonName"])
            while data := tls.recv(4096):
                self.received += data


def test_sighup_reloads_the_syslog_client_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the syslog sender loaded its client certificate once per process, so a
    renewed audit.syslog.cert was presented only after a restart."""
    ca = CertificateAuthority(tmp_path / "pki", "site-ca")
    old, renewed, other = (ca.issue(cn) for cn in ("router-old", "router-new", "other"))
    cert, key = tmp_path / "audit.crt", tmp_path / "audit.key"
    cert.write_bytes(old.cert.read_bytes())
    key.write_bytes(old.key.read_bytes())
    server = _TlsSyslogServer(ca)
    sender = SyslogSender(SyslogConfig(host="127.0.0.1", port=server.port, transport="tls",
                                       ca=ca.cert_path, cert=cert, key=key, timeout=5))
    try:
        sender.submit(b"<85>1 - - - - - - first")
        assert _wait(lambda: b"first" in server.received)
        cert.write_bytes(renewed.cert.read_bytes())
        key.write_bytes(renewed.key.read_bytes())
        sender.reload_tls()
        sender.submit(b"<85>1 - - - - - - second")
        assert _wait(lambda: b"second" in server.received)
        key.write_bytes(other.key.read_bytes())  # a broken renewal
        with caplog.at_level(logging.ERROR):
            sender.reload_tls()
        sender.submit(b"<85>1 - - - - - - third")
        assert _wait(lambda: b"third" in server.received)
    finally:
        sender.close(timeout=1)
        server.listener.close()
    assert server.clients == ["router-old", "router-new"]
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 1
    assert refusals[0].startswith("audit syslog: TLS reload refused, the previous certificate "
                                  "stays in use: audit.syslog.cert:")


def test_a_syslog_client_certificate_renewed_to_an_expired_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: an expired audit.syslog.cert loaded without a word on SIGHUP and the
    syslog server then refused every connection; check-config said nothing of it."""
    ca = CertificateAuthority(tmp_path / "pki", "site-ca")
    good, stale = ca.issue("router-good"), ca.issue("router-stale", expired=True)
    cert, key = tmp_path / "audit.crt", tmp_path / "audit.key"
    cert.write_bytes(good.cert.read_bytes())
    key.write_bytes(good.key.read_bytes())
    server = _TlsSyslogServer(ca)
    sender = SyslogSender(SyslogConfig(host="127.0.0.1", port=server.port, transport="tls",
                                       ca=ca.cert_path, cert=cert, key=key, timeout=5))
    try:
        sender.submit(b"<85>1 - - - - - - first")
        assert _wait(lambda: b"first" in server.received)
        cert.write_bytes(stale.cert.read_bytes())
        key.write_bytes(stale.key.read_bytes())
        with caplog.at_level(logging.ERROR):
            sender.reload_tls()
        sender.submit(b"<85>1 - - - - - - second")
        assert _wait(lambda: b"second" in server.received)
    finally:
        sender.close(timeout=1)
        server.listener.close()
    assert server.clients == ["router-good"]
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 1
    assert refusals[0].startswith("audit syslog: TLS reload refused, the previous certificate "
                                  f"stays in use: audit.syslog.cert: {cert} expired on ")
    assert "the syslog server would refuse it" in refusals[0]
    config = parse_config({"audit": {"enabled": True, "syslog": {
        "host": "127.0.0.1", "port": server.port, "transport": "tls", "ca": str(ca.cert_path),
        "cert": str(cert), "key": str(key)}},
        "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}]})
    check_contexts(config)  # at start a warning only: the router must not stop for it
    assert [note.split(" expired on ")[0] for note in expiry_warnings(config)] == [
        f"audit.syslog.cert: {cert}"]


def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
