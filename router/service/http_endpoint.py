"""One small HTTP port: /metrics (all processes), /healthz (alive), /readyz (accepting work),
/status (JSON: associations in progress and queues, for `dicom-router status`)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.core.log_safety import RepeatLimiter
from router.core.peer_address import host_port, plain_peer
from router.core.process_util import SERVER_POLL_SECONDS
from router.service.http_deadline import (
    BODY_BYTES_PER_SECOND,
    BadHead,
    DeadlineReader,
    RequestDeadline,
    body_length,
)
from router.service.http_types import (
    MAX_BODY,
    App,
    LimitedBody,
    Request,
    Response,
    body_limit,
    head_answer,
)
from router.service.metrics_collector import ChildrenCollector
from router.service.ports import listen_family

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]
AliveCheck = Callable[[], tuple[bool, str]]
StatusView = Callable[[], dict[str, Any]]


class AppHandler(BaseHTTPRequestHandler):
    """Serves the applications (operator API, console) of `apps`; 404 for anything else.
    A request (head and body) must arrive whole within `timeout` seconds."""

    apps: ClassVar[list[App]] = []
    timeout = 10.0

    def setup(self) -> None:
        super().setup()
        # Whole-request deadline: socketserver's timeout is per recv, which a client sending
        # a byte every few seconds never reaches.
        self.started = time.monotonic()
        self.reader = DeadlineReader(self.connection, self.started + float(self.timeout or 10.0))
        self.rfile = io.BufferedReader(self.reader)

    def do_GET(self) -> None:
        if not self._app("GET"):
            self._reply(404, b"not found\n")

    def do_POST(self) -> None:
        if not self._app("POST"):
            self._reply(404, b"not found\n")

    def _app(self, method: str) -> bool:
        """Offer the request to the applications; False if none takes it."""
        if not self.apps:
            return False
        path, _, query = self.path.partition("?")
        head = Request(method, path, query, {k.lower(): v for k, v in self.headers.items()},
                       b"", str(self.client_address[0]))
        try:
            length = body_length(self.headers, body_limit(self.apps, head))
        except BadHead as exc:
            self.close_connection = True  # the body, if any, is never read
            self.connection.settimeout(self.timeout)
            self._reply(exc.status, f"{exc}\n".encode())
            return True
        self.reader.deadline += length / BODY_BYTES_PER_SECOND  # a large upload's time
        if length and self._expects_continue():
            early = head_answer(self.apps, head)
            if early is not None:  # refused from its head: the body is never sent
                self.close_connection = True
                self.connection.settimeout(self.timeout)
                self._send(early)
                return True
            # The client holds its body back for this (curl for a second, then sends anyway).
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            if length > MAX_BODY:  # an upload an app allowed: it reads it as it comes
                request = dataclasses.replace(head, stream=LimitedBody(self.rfile, length))
            else:
                body = self.rfile.read(length) if length else b""
                request = dataclasses.replace(head, body=body)
                self.connection.settimeout(self.timeout)  # the answer's own bound from here
        except RequestDeadline:
            self._cut(method, path, length)
            return True
        for app in self.apps:
            try:
                response = app(request)
                self.connection.settimeout(self.timeout)
            except RequestDeadline:  # the app was reading a streamed body
                self._cut(method, path, length)
                return True
            except Exception as exc:  # a bug, not the client's: answer, say it in one line
                _log_failure(f"{method} {path} failed: {type(exc).__name__}: {exc}")
                self._reply(500, b"internal error: see the router's log\n")
                return True
            if response is not None:
                self._send(response)
                return True
        return False

    def _cut(self, method: str, path: str, length: int) -> None:
        """A request whose body did not arrive whole in time: 408 and one line."""
        spent = time.monotonic() - self.started
        _log_failure(f"{method} {path} from {self.client_address[0]}: its {length}-byte body "
                     f"did not arrive whole within {spent:.0f} s (metrics.request_timeout "
                     f"plus 1 s per MB); answered 408")
        self.close_connection = True
        self.connection.settimeout(self.timeout)
        self._reply(408, b"request timeout: the body did not arrive whole in time\n")

    def log_error(self, format: str, *args: object) -> None:
        if args and isinstance(args[-1], TimeoutError):  # a head cut at its deadline
            _log_failure(f"request from {self.client_address[0]} cut at its deadline: "
                         "the head did not arrive whole in time")

    def _expects_continue(self) -> bool:
        """An HTTP/1.1 client waiting for `100 Continue` before it sends its body (RFC 9110
        section 10.1.1: an HTTP/1.0 request's expectation is ignored). The final answers stay
        HTTP/1.0 with the connection closed; the interim one exists in HTTP/1.1 only."""
        expect = self.headers.get("Expect", "").strip().lower()
        return expect == "100-continue" and self.request_version >= "HTTP/1.1"

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes every few seconds would drown the router's own log


def _handler(registry: CollectorRegistry, ready: ReadyCheck, status: StatusView | None,
             apps: list[App], request_timeout: float,
             alive: AliveCheck | None) -> type[BaseHTTPRequestHandler]:
    class Handler(AppHandler):
        timeout = request_timeout
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, why = alive() if alive is not None else (True, "ok")
                self._reply(200 if ok else 503, f"{why}\n".encode())
            elif path == "/readyz":
                ok, why = ready()
                self._reply(200 if ok else 503, f"{why}\n".encode())
            elif path == "/status" and status is not None:
                self._reply(200, json.dumps(status()).encode(), "application/json")
            elif not self._app("GET"):
                self._reply(404, b"not found: try /metrics, /healthz, /readyz or /status\n")

    Handler.apps = apps
    return Handler


# A client can provoke failures at will: six lines a minute, then how many were left out.
_FAILURES = RepeatLimiter(what="http_failure")


def _log_failure(line: str) -> None:
    if _FAILURES.allow("http", 6):
        left_out = _FAILURES.suppressed("http")
        more = f" ({left_out} more like it left out)" if left_out else ""
        log.warning("HTTP: %s%s", line[:300], more)


class Server(ThreadingHTTPServer):
    """One thread per connection, as many as `max_connections`, and `per_source` from one
    address: past either a connection is closed at accept, in the accept loop (scrapes and
    probes need a handful, and one address cannot take every slot)."""

    daemon_threads = True
    request_queue_size = 64  # listen() backlog: socketserver's 5 drops SYNs in a burst

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int = 32, per_source: int | None = None) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        self.per_source = per_source or max(1, max_connections // 4)
        self.sources: Counter[str] = Counter()
        self.sources_lock = threading.Lock()
        self.address_family = listen_family(address[0])
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        request, client_address = super().get_request()
        return request, plain_peer(client_address)  # an IPv4 client of "::" as IPv4

    def process_request(self, request: Any, client_address: Any) -> None:
        source = str(client_address[0])
        with self.sources_lock:
            if self.sources[source] >= self.per_source:
                self.shutdown_request(request)
                return
            self.sources[source] += 1
        if not self.slots.acquire(blocking=False):
            self._leave(source)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            self._leave(source)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()
            self._leave(str(client_address[0]))

    def _leave(self, source: str) -> None:
        with self.sources_lock:
            self.sources[source] -= 1
            if self.sources[source] <= 0:
                del self.sources[source]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Never socketserver's traceback on stderr: a client can provoke it at will.
        # Load-balancer health checks (HAProxy) often close with a reset: not worth a line.
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, ConnectionError):
            return
        _log_failure(f"request from {client_address[0]} failed: {type(exc).__name__}: {exc}")


class HttpEndpoint:
    def __init__(self, host: str, port: int, multiproc_dir: str, ready: ReadyCheck,
                 status: StatusView | None = None, request_timeout: float = 10.0,
                 max_connections: int = 32, apps: list[App] | None = None,
                 max_per_source: int | None = None, alive: AliveCheck | None = None) -> None:
        registry = CollectorRegistry()
        ChildrenCollector(registry, path=multiproc_dir)
        handler = _handler(registry, ready, status, apps or [], request_timeout, alive)
        self.server = Server((host, port), handler, max_connections, max_per_source)
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True,
                                       kwargs={"poll_interval": SERVER_POLL_SECONDS})

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()
        host, port = self.server.server_address[:2]
        log.info("metrics and health on http://%s/metrics", host_port(str(host), int(port)))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
