"""Nothing a peer sends reaches the router's log unescaped (issue 16, finding 4).

A C-STORE whose Affected SOP Instance UID carries a newline and a whole fake log line,
NUL and escape bytes, sent by pynetdicom with its UID checks off; a calling AE title with a
newline; requests that make pynetdicom log tracebacks (a request that does not decode) or
raise in its reactor thread (a request followed at once by an unknown PDU: InvalidEventError
in Sta13). The router refuses them, and its log must show no forged line, no raw control
byte, no traceback, nor the malformed UID itself (UIDs are never logged).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.dcmtk import LOCALHOST
from tests.integration import pdus
from tests.integration.conftest import RouterFactory
from tests.integration.router_process import RouterProcess

pytestmark = pytest.mark.integration

FORGED = "1999-01-01 10:00:00,000 INFO    acceptor FORGED LINE"
HOSTILE_UID = f"1.2.3\n{FORGED}\x1b[31m\x00"  # 64 characters: pynetdicom checks lengths
HOSTILE_AE = "\n1999-01-01 FAKE"  # 16 characters: a whole AE title
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but tab and newline


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
            "rules": [{"name": "all", "forward": ["keep"]}], **extra}


def _send(router: RouterProcess, uid: str, calling_ae: str = "SENDER") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.hostile_sender", str(router.port),
         uid.encode("latin-1").hex(), calling_ae.encode("latin-1").hex()],
        capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() + done.stderr[-2000:]


def _assert_clean(log: str) -> None:
    forged = [line for line in log.splitlines() if line.startswith("1999-01-01")]
    assert not forged, f"forged log lines: {forged}"
    assert not CONTROL.search(log), f"raw control bytes in the log: {CONTROL.findall(log)[:5]}"
    assert "FORGED LINE" not in log, "the malformed UID was logged"
    assert "Traceback" not in log, "pynetdicom's tracebacks reached the log"


def _raw(router: RouterProcess, data: bytes) -> None:
    """Send `data` and read until the router refuses it (A-ASSOCIATE-RJ or A-ABORT), then
    close, as a peer does: waiting for the router to close cost its 1 s close wait each."""
    with pdus.RawAssociation(LOCALHOST, router.port) as conn:
        conn.send(data)
        with contextlib.suppress(OSError):  # closed, reset or silent: refused either way
            while conn.read_pdu()[0] not in (0x03, 0x07):
                pass  # an A-ASSOCIATE-AC comes before the abort of what follows it


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_hostile_uid_does_not_forge_log_lines(
    start_router: RouterFactory, tmp_path: Path, log_format: str
) -> None:
    router = start_router(_config(tmp_path, log_format=log_format, log_level="DEBUG",
                                  listen={"allowed_calling_ae": ["SENDER"]}))
    for _ in range(3):
        assert _send(router, HOSTILE_UID).startswith(str(0xC001))
    _raw(router, pdus.a_associate_rq(calling_ae=HOSTILE_AE))
    for _ in range(8):
        _raw(router, bytes.fromhex("0100000000080200000001010500"))  # does not decode
        _raw(router, pdus.a_associate_rq(calling_ae="SENDER") + bytes(6))  # then type 0x00
    _assert_clean(router.log())
    assert router.metric("dicom_router_log_suppressed_total", what="log") > 0
