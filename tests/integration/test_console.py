"""The web console's security against the real router, without a browser: roles, CSRF,
the login rate limit and its audit, sessions, and the console on its own HTTPS port."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.dcmtk import free_port
from tests.integration.conftest import RouterFactory
from tests.integration.console_client import ConsoleClient, console_users
from tests.integration.router_process import RouterProcess, wait_for
from tests.pki import CertificateAuthority

pytestmark = pytest.mark.integration


def config(tmp_path: Path, **console: Any) -> dict[str, Any]:
    return {
        "destinations": {n: {"type": "folder", "path": str(tmp_path / n)}
                         for n in ("pacs", "backup")},
        "rules": [{"name": "all", "forward": ["pacs"]}],
        "audit": {"enabled": True, "path": str(tmp_path / "audit.jsonl")},
        "console": {"enabled": True, "users": console_users(), **console},
    }


def paused(router: RouterProcess) -> bool:
    return bool(router.status()["broker"]["destinations"]["pacs"].get("paused"))


def audit_events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line)["AuditMessage"] for line in path.read_text().splitlines()] \
        if path.exists() else []


def test_roles_and_csrf_guard_every_action(start_router: RouterFactory,
                                           tmp_path: Path) -> None:
    router = start_router(config(tmp_path))
    base = f"http://127.0.0.1:{router.metrics_port}"
    anonymous = ConsoleClient(base)
    code, _, headers = anonymous.request("/console/")
    assert code == 303 and headers["Location"] == "/console/login"
    assert anonymous.request("/console/destinations/pacs/pause", {"csrf": "x"})[0] == 401

    viewer = ConsoleClient(base)
    assert viewer.login("victor") == 303
    assert viewer.request("/console/")[0] == 200
    token = viewer.csrf("/console/destinations")
    code, body, _ = viewer.request("/console/destinations/pacs/pause", {"csrf": token})
    assert code == 403 and "needs the operator role" in body
    assert wait_for(lambda: "paused" in router.status()["broker"]["destinations"]["pacs"])
    assert not paused(router)

    operator = ConsoleClient(base)
    assert operator.login("alice") == 303
    code, body, _ = operator.request("/console/destinations/pacs/pause", {})  # no CSRF token
    assert code == 403 and "CSRF" in body
    code, body, _ = operator.request("/console/destinations/pacs/pause", {"csrf": "forged"})
    assert code == 403 and not paused(router)
    token = operator.csrf("/console/destinations")
    code, _, headers = operator.request("/console/destinations/pacs/pause", {"csrf": token})
    assert code == 303 and headers["Location"].startswith("/console/destinations?msg=")
    assert "pacs paused" not in viewer.request(headers["Location"])[1]  # not the viewer's
    assert "pacs paused" in operator.request(headers["Location"])[1]
    # The message is the server's, shown once and to its user only: a link's text is not.
    assert "pacs paused" not in operator.request(headers["Location"])[1]
    crafted = "/console/destinations?msg=Router%20compromised%3A%20call%20555-0100"
    assert "compromised" not in operator.request(crafted)[1]
    assert wait_for(lambda: paused(router))

    refused = [e for e in audit_events(tmp_path)
               if e["EventIdentification"]["EventTypeCode"][0]["csd-code"] == "110132"]
    who = {e["ActiveParticipant"][0]["UserID"] for e in refused}
    assert {"console:victor", "console:alice"} <= who  # the viewer's action, the forged POSTs
    done = [e for e in audit_events(tmp_path)
            if "pause pacs" in e["EventIdentification"].get("EventOutcomeDescription", "")]
    assert done and done[-1]["ActiveParticipant"][0]["UserID"] == "console:alice"


def test_login_failures_are_limited_and_audited(start_router: RouterFactory,
                                                tmp_path: Path) -> None:
    router = start_router(config(tmp_path, login_failures=3))
    client = ConsoleClient(f"http://127.0.0.1:{router.metrics_port}")
    assert [client.login("alice", "wrong") for _ in range(3)] == [401, 401, 401]
    assert client.login("alice") == 429  # the right password too, until the window passes
    assert client.request("/console/destinations")[0] == 303
    failures = [e for e in audit_events(tmp_path) if "console login" in
                e["EventIdentification"].get("EventOutcomeDescription", "")]
    assert len(failures) == 4 and all(
        e["EventIdentification"]["EventOutcomeIndicator"] == "4" for e in failures)
    assert "too many failed logins" in failures[-1]["EventIdentification"][
        "EventOutcomeDescription"]


def test_sessions_expire(start_router: RouterFactory, tmp_path: Path) -> None:
    router = start_router(config(tmp_path, session_minutes=0.03))  # about 2 s
    client = ConsoleClient(f"http://127.0.0.1:{router.metrics_port}")
    assert client.login("alice") == 303
    assert client.request("/console/destinations")[0] == 200
    assert wait_for(lambda: client.request("/console/destinations")[0] == 303, timeout=20)


def test_bearer_token_and_own_https_port(start_router: RouterFactory, tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki", "console-ca")
    issued = ca.issue("localhost", dns=("localhost",), server=True)
    cert, key = issued.cert, issued.key
    token = tmp_path / "console.token"
    token.write_text("console-token\n")
    port = free_port()
    router = start_router(config(tmp_path, port=port, tls_cert=str(cert), tls_key=str(key),
                                 token_file=str(token), token_role="viewer"))
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    request = urllib.request.Request(f"https://localhost:{port}/console/overview.json",
                                     headers={"Authorization": "Bearer console-token"})
    with urllib.request.urlopen(request, context=context, timeout=10) as rsp:
        data = json.loads(rsp.read())
    assert "destinations" in data and data["ready"] is True
    # Not on the metrics port when it has its own.
    assert ConsoleClient(f"http://127.0.0.1:{router.metrics_port}").request(
        "/console/login")[0] == 404
    # Regression: only the DICOM listener's certificate had an expiry gauge (and alert).
    expiry = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    assert router.metric("dicom_router_tls_certificate_expiry_timestamp_seconds",
                         listener="console") == int(expiry.timestamp())


def _dead_letter(spool: Path, job_id: str) -> None:
    from tests.unit.helpers import make_header

    folder = spool / "dead-letters"
    (folder / f"{job_id}.dcm").write_bytes(b"DICM")
    record = {"job": make_header(job_id, ("pacs",)).to_dict(), "destination": "pacs",
              "reason": "no_context", "detail": "refused", "attempts": 1, "failed_at": 1.0}
    (folder / f"{job_id}.pacs.json").write_text(json.dumps(record))


def test_purge_every_dead_letter_shown(start_router: RouterFactory, tmp_path: Path) -> None:
    router = start_router(config(tmp_path))
    for job_id in ("00000000000000aa11111111", "00000000000000bb22222222"):
        _dead_letter(router.spool, job_id)
    base = f"http://127.0.0.1:{router.metrics_port}"
    viewer, operator = ConsoleClient(base), ConsoleClient(base)
    assert viewer.login("victor") == 303 and operator.login("alice") == 303
    page_text = operator.request("/console/dead-letters")[1]
    assert "2 dead letter(s)" in page_text and "Purge 2" in page_text
    ids = "00000000000000aa11111111.pacs 00000000000000bb22222222.pacs"
    token = viewer.csrf("/console/dead-letters")
    assert viewer.request("/console/dead-letters/purge", {"csrf": token, "ids": ids})[0] == 403
    assert len(list((router.spool / "dead-letters").glob("*.json"))) == 2
    token = operator.csrf("/console/dead-letters")
    code, _, headers = operator.request("/console/dead-letters/purge",
                                        {"csrf": token, "ids": ids})
    assert code == 303 and "2 dead letter(s) purged" in operator.request(headers["Location"])[1]
    assert list((router.spool / "dead-letters").iterdir()) == []


def _console_common_name(port: int, ca: CertificateAuthority) -> str:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        cert = tls.getpeercert()
    return str(dict(rdn[0] for rdn in cert["subject"])["commonName"])


def test_sighup_reloads_the_console_certificate(start_router: RouterFactory,
                                                tmp_path: Path) -> None:
    """Regression: the console's HTTPS context was built once, so a renewed console.tls_cert
    was served only after a restart, though the expiry warning said "send SIGHUP"."""
    ca = CertificateAuthority(tmp_path / "pki", "console-ca")
    old = ca.issue("localhost", dns=("localhost",), server=True)
    renewed = ca.issue("console-renewed", dns=("localhost",), server=True)
    other = ca.issue("someone-else", dns=("localhost",), server=True)
    cert, key = tmp_path / "console.crt", tmp_path / "console.key"
    cert.write_bytes(old.cert.read_bytes())
    key.write_bytes(old.key.read_bytes())
    token = tmp_path / "console.token"
    token.write_text("console-token\n")
    port = free_port()
    router = start_router(config(tmp_path, port=port, tls_cert=str(cert), tls_key=str(key),
                                 token_file=str(token), token_role="viewer"))
    assert _console_common_name(port, ca) == "localhost"
    cert.write_bytes(renewed.cert.read_bytes())
    key.write_bytes(renewed.key.read_bytes())
    os.kill(router.process.pid, signal.SIGHUP)
    assert wait_for(lambda: _console_common_name(port, ca) == "console-renewed"), \
        router.log()[-2000:]
    key.write_bytes(other.key.read_bytes())  # a broken renewal: another certificate's key
    os.kill(router.process.pid, signal.SIGHUP)
    assert wait_for(lambda: "console: TLS reload refused" in router.log())
    assert _console_common_name(port, ca) == "console-renewed"
    assert router.log().count("console: TLS reload refused") == 1
