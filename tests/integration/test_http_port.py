"""The HTTP port against hostile clients (raw sockets): slow, oversized, chunked and garbage
requests get a clear 4xx or are closed at their deadline, never lock the port for others,
and never reach socketserver's traceback."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.service.http_endpoint import HttpEndpoint
from router.service.http_types import Request, Response, json_response
from tests.dcmtk import free_port
from tests.integration.conftest import RouterFactory
from tests.integration.router_process import raw_http

TIMEOUT = 1.5  # metrics.request_timeout of these endpoints


def echo(request: Request) -> Response | None:
    if not request.path.startswith("/api/"):
        return None
    return json_response(200, {"got": len(request.body)})


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[HttpEndpoint]:
    server = HttpEndpoint("127.0.0.1", free_port(), str(tmp_path), lambda: (True, "ready"),
                          request_timeout=TIMEOUT, apps=[echo])
    server.start()
    yield server
    server.stop()


def post(port: int, headers: str, body: bytes = b"") -> bytes:
    return raw_http(port, f"POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()
                + body)


def test_a_slow_request_is_closed_at_its_deadline(endpoint: HttpEndpoint) -> None:
    """A byte at a time, each well within a recv timeout, still ends at the deadline."""
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 4 * TIMEOUT:
            try:
                sock.sendall(b"X")
                time.sleep(TIMEOUT / 3)
            except OSError:
                closed = True
                break
            sock.settimeout(0.01)
            with contextlib.suppress(TimeoutError):
                if sock.recv(1) == b"":
                    closed = True
                    break
        assert closed, "a request trickling in was never closed"
        assert time.monotonic() - start < 2 * TIMEOUT


def test_one_address_cannot_take_every_slot(tmp_path: Path) -> None:
    server = HttpEndpoint("127.0.0.1", free_port(), str(tmp_path), lambda: (True, "ready"),
                          request_timeout=30, max_connections=8, max_per_source=3)
    server.start()
    try:
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(socket.create_connection(
                ("127.0.0.1", server.port), timeout=5)) for _ in range(6)]
            for sock in held:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            time.sleep(0.3)
            closed = 0
            for sock in held:
                sock.settimeout(0.5)
                with contextlib.suppress(TimeoutError):
                    closed += sock.recv(1) == b""
            assert closed == 3  # past the per-source cap: closed at accept
        # from another loopback address the port still answers
        with socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                      source_address=("127.0.0.2", 0)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.0 200")
    finally:
        server.stop()


def test_a_large_body_is_refused_before_it_is_read(endpoint: HttpEndpoint) -> None:
    answer = post(endpoint.port, f"Content-Length: {64 * 1024**2}\r\n")
    assert answer.startswith(b"HTTP/1.0 413")
    assert b"at most" in answer


def test_a_small_body_is_read(endpoint: HttpEndpoint) -> None:
    answer = post(endpoint.port, "Content-Length: 5\r\n", b"hello")
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b'{"got": 5}')


def test_chunked_bodies_are_refused(endpoint: HttpEndpoint) -> None:
    answer = post(endpoint.port, "Transfer-Encoding: chunked\r\n",
                  b"5\r\nhello\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 411")
    assert b"Content-Length" in answer


@pytest.mark.parametrize("value", ["abc", "x", "-1", "1e3", " 5 5"])
def test_a_bad_content_length_is_a_400(endpoint: HttpEndpoint, value: str,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    answer = post(endpoint.port, f"Content-Length: {value}\r\n")
    assert answer.startswith(b"HTTP/1.0 400"), answer
    assert b"Content-Length" in answer
    assert "Traceback" not in capfd.readouterr().err


def test_an_app_that_fails_answers_500_in_one_line(tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    def broken(request: Request) -> Response | None:
        raise TypeError("a bug")

    server = HttpEndpoint("127.0.0.1", free_port(), str(tmp_path), lambda: (True, "ready"),
                          apps=[broken])
    server.start()
    try:
        answer = raw_http(server.port, b"GET /x HTTP/1.0\r\n\r\n")
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.0 500")
    assert "Traceback" not in capfd.readouterr().err


# --- Expect: 100-continue (RFC 9110 section 10.1.1) -----------------------------------------


def _head(port: int, path: str, length: int, headers: str = "") -> socket.socket:
    """A POST's head with `Expect: 100-continue`, its body held back as curl does."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {length}\r\n{headers}\r\n"
                 .encode())
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_acceptable_body_is_asked_for_with_100_continue(endpoint: HttpEndpoint) -> None:
    """The port answered nothing until the body came: curl waited a second for every POST
    over 1 MB (newer curl) and a client without a fallback until the request's deadline."""
    with _head(endpoint.port, "/api/x", 5) as sock:
        sock.settimeout(TIMEOUT / 2)  # well before the request's deadline
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b'{"got": 5}')


def test_a_body_too_large_is_refused_without_100_continue(endpoint: HttpEndpoint) -> None:
    with _head(endpoint.port, "/api/x", 64 * 1024**2) as sock:
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.0 413") and b"100 Continue" not in answer


def test_an_http_1_0_expectation_is_ignored(endpoint: HttpEndpoint) -> None:
    answer = raw_http(endpoint.port, b"POST /api/x HTTP/1.0\r\nExpect: 100-continue\r\n"
                                     b"Content-Length: 5\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.0 200") and b"100 Continue" not in answer


def test_the_router_refuses_a_post_without_its_token_before_the_body(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """A running router with api.token_file: a POST without the token gets its 403 at once
    from its head (the body never sent); with the token, 100 Continue and then the answer."""
    token = tmp_path / "api.token"
    token.write_text("s3cret-token\n")
    router = start_router({
        "destinations": {"pacs": {"type": "folder", "path": str(tmp_path / "pacs")}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
        "api": {"token_file": str(token)}})
    body = b'{"ids": ["0000000000000001aaaaaaaa.pacs"]}'
    with _head(router.metrics_port, "/api/dead-letters/replay", 500_000) as sock:
        sock.settimeout(TIMEOUT)
        refused = _until_closed(sock)
    assert refused.startswith(b"HTTP/1.0 403") and b"no bearer token" in refused
    assert b"100 Continue" not in refused
    with _head(router.metrics_port, "/api/dead-letters/replay", len(body),
               "Authorization: Bearer s3cret-token\r\n") as sock:
        sock.settimeout(TIMEOUT)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.0 400") and b"no dead letter" in answer


# --- a large upload's deadline ------------------------------------------------------------


class Upload:
    """An app that allows a large body and reads it as it comes, as the rule tester does."""

    def __call__(self, request: Request) -> Response | None:
        if request.path != "/upload":
            return None
        got = 0
        while request.stream is not None and (block := request.stream.read(65536)):
            got += len(block)
        return json_response(200, {"got": got or len(request.body)})

    def body_limit(self, head: Request) -> int:
        return 8 * 1024**2


@pytest.fixture
def uploads(tmp_path: Path) -> Iterator[HttpEndpoint]:
    server = HttpEndpoint("127.0.0.1", free_port(), str(tmp_path), lambda: (True, "ready"),
                          request_timeout=TIMEOUT, apps=[Upload()])
    server.start()
    yield server
    server.stop()


def _upload_head(port: int, length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
                 .encode())
    return sock


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_large_upload_has_time_for_its_size(uploads: HttpEndpoint) -> None:
    """4 MB earn 4 s more than request_timeout: an upload paused past request_timeout
    still arrives whole and is answered."""
    length = 4 * 1024**2
    with _upload_head(uploads.port, length) as sock:
        sock.sendall(b"x" * (length // 2))
        time.sleep(TIMEOUT + 0.5)
        sock.sendall(b"x" * (length - length // 2))
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.0 200"), answer[:100]
    assert answer.endswith(f'{{"got": {length}}}'.encode())


def test_an_upload_cut_at_its_deadline_gets_408_and_a_log_line(
        uploads: HttpEndpoint, caplog: pytest.LogCaptureFixture) -> None:
    length = 2 * 1024**2  # request_timeout + 2 s: then it is cut
    with caplog.at_level("WARNING"), _upload_head(uploads.port, length) as sock:
        sock.sendall(b"x" * (length // 2))
        answer = _answer(sock)  # the rest never comes
    assert answer.startswith(b"HTTP/1.0 408"), answer[:100]
    assert b"did not arrive whole in time" in answer
    lines = [r.getMessage() for r in caplog.records if "answered 408" in r.getMessage()]
    assert len(lines) == 1 and "POST /upload" in lines[0]
    assert not any(r.exc_info for r in caplog.records)


def test_an_ipv4_client_of_a_dual_stack_port_is_seen_by_its_ipv4_address(
        tmp_path: Path) -> None:
    """metrics.host "::": the API's loopback check, its audit records and the console's
    login limits see 127.0.0.1, not ::ffff:127.0.0.1; an IPv6 client stays itself."""
    def client(request: Request) -> Response | None:
        return json_response(200, {"client": request.client}) if request.path == "/api/who" \
            else None

    server = HttpEndpoint("::", free_port(), str(tmp_path), lambda: (True, "ready"),
                          apps=[client])
    server.start()
    try:
        for host, seen in (("127.0.0.1", "127.0.0.1"), ("[::1]", "::1")):
            url = f"http://{host}:{server.port}/api/who"
            with urllib.request.urlopen(url, timeout=5) as response:
                assert json.loads(response.read()) == {"client": seen}
    finally:
        server.stop()
