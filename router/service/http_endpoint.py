"""One small HTTP port: /metrics (all processes), /healthz (alive), /readyz (accepting work),
/status (JSON: associations in progress and queues, for `dicom-router status`)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from router.core.process_util import SERVER_POLL_SECONDS
from router.service.http_types import MAX_BODY, App, Request, Response

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]
StatusView = Callable[[], dict[str, Any]]


class AppHandler(BaseHTTPRequestHandler):
    """Serves the applications (operator API, console) of `apps`; 404 for anything else."""

    apps: ClassVar[list[App]] = []
    # Without it a client that sends half a request holds its thread for ever.
    timeout = 10.0

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
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY or length < 0:
            self._reply(413, b"request body too large\n")
            return True
        path, _, query = self.path.partition("?")
        request = Request(method, path, query, {k.lower(): v for k, v in self.headers.items()},
                          self.rfile.read(length) if length else b"",
                          str(self.client_address[0]))
        for app in self.apps:
            response = app(request)
            if response is not None:
                self._send(response)
                return True
        return False

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
             apps: list[App], request_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(AppHandler):
        timeout = request_timeout
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                ok, why = ready()
                self._reply(200 if ok else 503, f"{why}\n".encode())
            elif path == "/status" and status is not None:
                self._reply(200, json.dumps(status()).encode(), "application/json")
            elif not self._app("GET"):
                self._reply(404, b"not found: try /metrics, /healthz, /readyz or /status\n")

    Handler.apps = apps
    return Handler


class Server(ThreadingHTTPServer):
    """One thread per connection, as many as `max_connections`: past that a connection
    is closed at accept, in the accept loop (scrapes and probes need a handful)."""

    daemon_threads = True
    request_queue_size = 64  # listen() backlog: socketserver's 5 drops SYNs in a burst

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int = 32) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Load-balancer health checks (HAProxy) often close with a reset: not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class HttpEndpoint:
    def __init__(self, host: str, port: int, multiproc_dir: str, ready: ReadyCheck,
                 status: StatusView | None = None, request_timeout: float = 10.0,
                 max_connections: int = 32, apps: list[App] | None = None) -> None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiproc_dir)
        handler = _handler(registry, ready, status, apps or [], request_timeout)
        self.server = Server((host, port), handler, max_connections)
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True,
                                       kwargs={"poll_interval": SERVER_POLL_SECONDS})

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()
        log.info("metrics and health on http://%s:%d/metrics", *self.server.server_address[:2])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
