"""A client-side TLS tunnel for DICOM tools that cannot speak TLS themselves.

DCMTK 3.6.7's getscu and movescu have no +tls options (echoscu, findscu and storescu do).
The tunnel listens in plain TCP on 127.0.0.1 and opens, for every connection it accepts, a
TLS connection (with a client certificate, verifying the server against a CA) to the real
server, then copies bytes both ways untouched: the DICOM peer is still the DCMTK tool, and
the server sees an ordinary TLS client.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.dcmtk import LOCALHOST


class TlsTunnel:
    """Plain 127.0.0.1:`port` -> TLS `target`; use as a context manager."""

    def __init__(self, target_port: int, ca: Path, cert: Path, key: Path,
                 server_name: str = "localhost") -> None:
        self.target_port = target_port
        self.server_name = server_name
        self.context = ssl.create_default_context(cafile=str(ca))
        self.context.load_cert_chain(str(cert), str(key))
        self.listener = socket.create_server((LOCALHOST, 0))
        self.listener.settimeout(0.2)  # close() does not wake a blocked accept(): poll a flag
        self._closing = threading.Event()
        self.port: int = self.listener.getsockname()[1]
        self.errors: list[str] = []  # handshake failures towards the server, for asserts
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._accepting.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closing.set()
        self._accepting.join(5)
        self.listener.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                raw = socket.create_connection((LOCALHOST, self.target_port), timeout=30)
                server = self.context.wrap_socket(raw, server_hostname=self.server_name)
            except (OSError, ssl.SSLError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return  # the tool sees its connection closed, as a refused TLS peer would do
            with server:
                _relay(client, server)


def _relay(client: socket.socket, server: ssl.SSLSocket) -> None:
    """Copy both ways in one thread until either side ends. One thread because an SSLSocket
    must not be read and written from two threads at once; the TLS side reads non-blocking
    because a readable socket may carry only a TLS 1.3 session ticket, no data."""
    server.setblocking(False)
    while True:
        readable = ([server] if server.pending()
                    else select.select([client, server], [], [], 120)[0])
        if not readable:
            return  # idle for two minutes: the tool has long given up
        if client in readable:
            try:
                data = client.recv(65536)
            except OSError:
                return
            if not data:
                return
            server.setblocking(True)
            server.sendall(data)
            server.setblocking(False)
        if server in readable:
            try:
                data = server.recv(65536)
            except ssl.SSLWantReadError:
                continue
            except OSError:
                return  # reset or TLS alert from the server: the tool sees its link close
            if not data:
                return
            try:
                client.sendall(data)
            except OSError:
                return
