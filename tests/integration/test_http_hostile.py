"""The real router's HTTP port (metrics, API, console) against hostile raw requests: a
trickling client, chunked and oversized bodies, a garbage Content-Length. Each gets a 4xx
with a reason or is closed at its deadline; the probes stay answered; nothing is replayed
by accident and no traceback reaches the log."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest

from tests.integration.conftest import RouterFactory
from tests.integration.router_process import http_get, raw_http
from tests.integration.test_console import _dead_letter, config

pytestmark = pytest.mark.integration

JOBS = ("00000000000000aa11111111", "00000000000000bb22222222", "00000000000000cc33333333")


def post(port: int, path: str, headers: str, body: bytes = b"") -> bytes:
    return raw_http(port, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Content-Type: application/json\r\n{headers}\r\n".encode() + body)


def test_hostile_requests_get_a_reason_and_harm_nothing(start_router: RouterFactory,
                                                        tmp_path: Path) -> None:
    router = start_router({**config(tmp_path), "metrics": {"request_timeout": 2,
                                                           "max_connections": 8,
                                                           "max_connections_per_source": 4}})
    port = router.metrics_port
    for job_id in JOBS:
        _dead_letter(router.spool, job_id)

    # chunked: refused, not read as an empty body ("replay everything")
    body = b'{"ids": ["%s.pacs"], "to": "backup"}' % JOBS[0].encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = post(port, "/api/dead-letters/replay", "Transfer-Encoding: chunked\r\n", chunked)
    assert answer.startswith(b"HTTP/1.0 411"), answer
    assert len(list((router.spool / "dead-letters").glob("*.json"))) == 3

    # oversized, unauthenticated: refused before a byte of the body is read
    for path in ("/api/dead-letters/replay", "/console/rules/test"):
        answer = post(port, path, f"Content-Length: {64 * 1024**2}\r\n")
        assert answer.startswith(b"HTTP/1.0 413"), answer

    # garbage Content-Length: 400, and no traceback in the log
    for value in ("abc", "x"):
        answer = post(port, "/api/dead-letters/replay", f"Content-Length: {value}\r\n")
        assert answer.startswith(b"HTTP/1.0 400"), answer

    # slow clients from one address hold at most their share, and only until the deadline
    with contextlib.ExitStack() as stack:
        slow = [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
                for _ in range(8)]
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        for _ in range(3):
            time.sleep(0.5)
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
        with socket.create_connection(("127.0.0.1", port), timeout=5,
                                      source_address=("127.0.0.2", 0)) as probe:
            probe.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert probe.recv(100).startswith(b"HTTP/1.0 200")
        time.sleep(2.5)  # past request_timeout: every slow one is gone, slots are free
        assert http_get(port, "/healthz")[0] == 200

    assert len(list((router.spool / "dead-letters").glob("*.json"))) == 3
    assert "Traceback" not in router.log()
