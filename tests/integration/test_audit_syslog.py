"""Audit messages to a real syslog server: Debian's rsyslogd, in the foreground, on 127.0.0.1.

Each test runs its own rsyslogd (`rsyslogd -n -f CONF -i PIDFILE`) with a config written to a
temporary folder: an imudp or imtcp input (TLS through rsyslog-gnutls, certificates made here
with openssl) and an omfile action that writes what rsyslog parsed out of each message as one
JSON object per line. So the tests see the message as a syslog server understood it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from router.audit import trail as audit
from router.audit.trail import AuditTrail
from router.core.audit_config import AuditConfig, SyslogConfig, Transport

pytestmark = pytest.mark.integration

LOCALHOST = "127.0.0.1"
APT_PACKAGES = "rsyslog rsyslog-gnutls openssl"
STUDY = "1.2.826.0.1.3680043.8.498.777"
CT = "1.2.840.10008.5.1.4.1.1.2"
RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    r"(?P<msgid>\S+) - (?P<msg>.*)$", re.DOTALL)

CAPTURE_TEMPLATE = """
template(name="capture" type="list") {
  constant(value="{")
  property(outname="version" name="protocol-version" format="jsonf") constant(value=",")
  property(outname="facility" name="syslogfacility" format="jsonf") constant(value=",")
  property(outname="severity" name="syslogseverity" format="jsonf") constant(value=",")
  property(outname="app" name="app-name" format="jsonf") constant(value=",")
  property(outname="procid" name="procid" format="jsonf") constant(value=",")
  property(outname="msgid" name="msgid" format="jsonf") constant(value=",")
  property(outname="sd" name="structured-data" format="jsonf") constant(value=",")
  property(outname="msg" name="msg" format="jsonf") constant(value=",")
  property(outname="raw" name="rawmsg" format="jsonf")
  constant(value="}\\n")
}
"""


def rsyslogd_path() -> str:
    found = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"rsyslogd not found: apt-get install {APT_PACKAGES}")
    return found


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


class Certificates:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("openssl") is None:
            raise RuntimeError(f"openssl not found: apt-get install {APT_PACKAGES}")
        self.folder = folder
        self.ca, self.ca_key = self._ca("ca", "Audit Test CA")
        self.rogue_ca, _ = self._ca("rogue", "Somebody Else's CA")
        self.server, self.server_key = self._leaf(
            "server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            "extendedKeyUsage=serverAuth\n")
        self.client, self.client_key = self._leaf(
            "client", "dicom-router", "extendedKeyUsage=clientAuth\n")

    def _ca(self, name: str, subject: str) -> tuple[Path, Path]:
        cert, key = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={subject}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return cert, key

    def _leaf(self, name: str, common_name: str, extensions: str) -> tuple[Path, Path]:
        cert, key = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        csr, ext = self.folder / f"{name}.csr", self.folder / f"{name}.ext"
        ext.write_text(extensions)
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
            "-out", str(csr), "-subj", f"/CN={common_name}")
        run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca),
            "-CAkey", str(self.ca_key), "-CAcreateserial", "-days", "2",
            "-out", str(cert), "-extfile", str(ext))
        return cert, key


class Rsyslog:
    """One rsyslogd in the foreground, listening on 127.0.0.1:port."""

    def __init__(self, folder: Path, transport: Transport, port: int,
                 certs: Certificates | None = None, client_auth: str = "anon") -> None:
        self.folder, self.transport, self.port = folder, transport, port
        self.out = folder / "received.jsonl"
        self.log = folder / "rsyslogd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        tls_global = ""
        module = f'module(load="im{"udp" if transport == "udp" else "tcp"}"'
        if transport == "tls":
            assert certs is not None
            tls_global = (f' DefaultNetstreamDriverCAFile="{certs.ca}"'
                          f' DefaultNetstreamDriverCertFile="{certs.server}"'
                          f' DefaultNetstreamDriverKeyFile="{certs.server_key}"')
            module += (' StreamDriver.Name="gtls" StreamDriver.Mode="1"'
                       f' StreamDriver.AuthMode="{client_auth}"')
        kind = "imudp" if transport == "udp" else "imtcp"
        self.conf = folder / "rsyslog.conf"
        self.conf.write_text(
            f'global(workDirectory="{folder}" maxMessageSize="64k"{tls_global})\n'
            f"{module})\n"
            f'input(type="{kind}" address="{LOCALHOST}" port="{port}")\n'
            f"{CAPTURE_TEMPLATE}\n"
            f'action(type="omfile" file="{self.out}" template="capture")\n')

    def start(self) -> Rsyslog:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [rsyslogd_path(), "-n", "-f", str(self.conf), "-i", str(self.folder / "pid")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        if self.transport != "udp":
            try:
                with socket.create_connection((LOCALHOST, self.port), timeout=0.5):
                    return True
            except OSError:
                return False
        # UDP cannot be probed: send a probe until rsyslog has written one.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"<13>1 - - probe - - - ready?", (LOCALHOST, self.port))
        time.sleep(0.05)
        return self.out.exists() and "probe" in self.out.read_text()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def received(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first `count` messages from the router, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            mine = self._mine()
            if len(mine) >= count or time.monotonic() > deadline:
                return mine
            time.sleep(0.05)

    def _mine(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        text = self.out.read_text()
        # rsyslog may be writing a line this moment: only whole lines count.
        whole = text[:text.rfind("\n") + 1]
        lines = [json.loads(line) for line in whole.splitlines() if line]
        return [line for line in lines if line["app"] == "dicom-router"]


RsyslogFactory = Callable[..., Rsyslog]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def rsyslog(tmp_path: Path, certs: Certificates) -> Iterator[RsyslogFactory]:
    servers: list[Rsyslog] = []

    def start(transport: Transport, client_auth: str = "anon", port: int | None = None,
              started: bool = True) -> Rsyslog:
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        folder = tmp_path / f"rsyslog{len(servers)}"
        folder.mkdir()
        server = Rsyslog(folder, transport, port or free_port(kind), certs, client_auth)
        servers.append(server)
        return server.start() if started else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def validator() -> Any:
    path = Path(audit.__file__).parent / "schemas" / "audit-message.schema.json"
    schema = json.loads(path.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def trail_for(tmp_path: Path, server: Rsyslog, **syslog: Any) -> AuditTrail:
    config = AuditConfig(
        enabled=True, path=tmp_path / "audit.jsonl",
        syslog_format=syslog.pop("syslog_format", "json"),
        syslog=SyslogConfig(host=LOCALHOST, port=server.port, transport=server.transport,
                            timeout=2.0, **syslog))
    return AuditTrail(config, "ROUTER")


def emit_all(trail: AuditTrail) -> None:
    trail.application_started()
    trail.association_accepted("MODALITY", "ROUTER", LOCALHOST)
    trail.instances_transferred("MODALITY", "ROUTER", LOCALHOST, STUDY, {CT: 3}, False)
    trail.security_alert("denied_ae", "calling AE not allowed", LOCALHOST, "INTRUDER")


def assert_rfc5424_audit(received: list[dict[str, Any]], validator: Any) -> None:
    """What rsyslog parsed is RFC 5424, and each MSG is a valid audit message."""
    assert len(received) == 4, received
    events = []
    for line in received:
        assert line["version"] == "1"  # rsyslog recognised RFC 5424 (0 = RFC 3164)
        assert line["facility"] == "10"
        assert line["procid"] == str(os.getpid())
        assert line["msgid"] == "DICOM+AUDIT+JSON"
        assert line["sd"] == "-"
        header = RFC5424.match(line["raw"])
        assert header is not None, line["raw"]
        assert int(header["pri"]) == 10 * 8 + int(line["severity"])
        assert datetime.fromisoformat(header["ts"].replace("Z", "+00:00")).tzinfo is not None
        assert header["msg"] == line["msg"]
        message = json.loads(line["msg"])
        errors = [e.message for e in validator.iter_errors(message)]
        assert not errors, errors
        event = message["AuditMessage"]["EventIdentification"]
        events.append((event["EventID"]["csd-code"], event["EventOutcomeIndicator"],
                       line["severity"]))
    assert events == [("110100", "0", "5"), ("110114", "0", "5"), ("110104", "4", "4"),
                      ("110113", "4", "4")]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_plain_delivery(
    tmp_path: Path, rsyslog: RsyslogFactory, validator: Any, transport: Transport
) -> None:
    server = rsyslog(transport)
    with trail_for(tmp_path, server) as trail:
        emit_all(trail)
        assert_rfc5424_audit(server.received(4), validator)
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 4


def test_tls_delivery(
    tmp_path: Path, rsyslog: RsyslogFactory, certs: Certificates, validator: Any
) -> None:
    server = rsyslog("tls")  # the server authenticates itself; we check it against our CA
    with trail_for(tmp_path, server, ca=certs.ca) as trail:
        emit_all(trail)
        assert_rfc5424_audit(server.received(4), validator)


def test_mutual_tls_delivery(
    tmp_path: Path, rsyslog: RsyslogFactory, certs: Certificates, validator: Any
) -> None:
    server = rsyslog("tls", client_auth="x509/certvalid")
    with trail_for(tmp_path, server, ca=certs.ca, cert=certs.client,
                   key=certs.client_key) as trail:
        emit_all(trail)
        assert_rfc5424_audit(server.received(4), validator)


def test_untrusted_server_gets_nothing(
    tmp_path: Path, rsyslog: RsyslogFactory, certs: Certificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = rsyslog("tls")
    with caplog.at_level(logging.WARNING):
        trail = trail_for(tmp_path, server, ca=certs.rogue_ca)
        emit_all(trail)
        deadline = time.monotonic() + 10
        while "CERTIFICATE_VERIFY_FAILED" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        trail.close(timeout=0.5)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert server.received(0) == []
    assert trail.syslog_dropped == 4
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 4


def test_missing_client_certificate_is_reported(
    tmp_path: Path, rsyslog: RsyslogFactory, certs: Certificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = rsyslog("tls", client_auth="x509/certvalid")
    with caplog.at_level(logging.WARNING):
        trail = trail_for(tmp_path, server, ca=certs.ca)
        trail.application_started()
        deadline = time.monotonic() + 10
        while "client certificate" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        trail.close(timeout=0.5)
    assert "client certificate" in caplog.text
    assert server.received(0) == []
    assert trail.syslog_dropped == 1


def test_messages_wait_for_a_restarted_server(
    tmp_path: Path, rsyslog: RsyslogFactory, validator: Any
) -> None:
    first = rsyslog("tcp")
    with trail_for(tmp_path, first) as trail:
        trail.application_started()
        assert len(first.received(1)) == 1
        first.stop()
        for _ in range(3):  # while the server is away
            trail.instances_transferred("MODALITY", "ROUTER", LOCALHOST, STUDY, {CT: 1}, True)
        time.sleep(0.5)
        second = rsyslog("tcp", port=first.port)
        received = second.received(3, timeout=20)
        assert len(received) == 3
        for line in received:
            assert not list(validator.iter_errors(json.loads(line["msg"])))


def test_xml_form_over_syslog(tmp_path: Path, rsyslog: RsyslogFactory) -> None:
    server = rsyslog("tcp")
    with trail_for(tmp_path, server, syslog_format="xml") as trail:
        trail.instances_transferred("MODALITY", "ROUTER", LOCALHOST, STUDY, {CT: 2}, True)
        (line,) = server.received(1)
    assert line["msgid"] == "IHE+RFC-3881"
    root = ET.fromstring(line["msg"])
    assert root.tag == "AuditMessage"
    study = root.find("ParticipantObjectIdentification")
    assert study is not None and study.get("ParticipantObjectID") == STUDY
