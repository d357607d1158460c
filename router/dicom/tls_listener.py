"""TLS on the listener, with the handshake in each connection's own thread and a deadline.

pynetdicom's server does the handshake inside its accept loop, with no timeout: one client
that connects and never speaks TLS stalls every association behind it. Here the server
accepts plain sockets and each connection thread wraps its own, bounded by
`handshake_timeout`. The context sits in a holder so SIGHUP can swap in reloaded
certificates without touching live associations.

The server also admits each connection against the counts of connections still negotiating
(router.pending), in the accept loop: one refused costs no thread.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from router.core import metrics
from router.core.config import ListenerTLS
from router.core.process_util import SERVER_POLL_SECONDS
from router.core.tls import TLSConfigError, failure_reason, server_context
from router.dicom.guarded_transport import Finished, GuardedRequestHandler, ReadLimits
from router.dicom.pending import PendingConnections, Ticket

log = logging.getLogger(__name__)

FailureHook = Callable[[str, str], None]  # (reason, peer address)


class TLSListener:
    def __init__(self, config: ListenerTLS, on_failure: FailureHook | None = None) -> None:
        self.config = config
        self.context = server_context(config)
        self.on_failure = on_failure
        self._lock = threading.Lock()

    def reload(self) -> bool:
        """Load the certificate, key and CA files again; keep the old context if they fail."""
        try:
            context = server_context(self.config)
        except TLSConfigError as exc:
            log.error("TLS reload refused, the previous certificates stay in use: %s", exc)
            return False
        with self._lock:
            self.context = context
        log.info("TLS certificates reloaded; live associations keep their sessions")
        return True

    def handshake(self, sock: socket.socket, address: Any) -> ssl.SSLSocket | None:
        """Wrap one accepted connection; None (connection closed) if the handshake fails."""
        with self._lock:
            context = self.context
        sock.settimeout(self.config.handshake_timeout)
        try:
            tls = context.wrap_socket(sock, server_side=True)
        except (OSError, ValueError) as exc:
            reason = failure_reason(exc)
            metrics.TLS_FAILURES.labels(reason).inc()
            peer = address[0] if isinstance(address, tuple) else str(address)
            log.warning("TLS handshake from %s failed: %s", peer, reason)
            if self.on_failure is not None:
                self.on_failure(reason, peer)
            sock.close()
            return None
        tls.settimeout(None)  # from here on pynetdicom's own timeouts apply
        return tls


class RouterAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the acceptor's guards (router.guarded_transport);
    with `tls` set, each connection thread does its own handshake before the association
    starts."""

    tls: TLSListener | None = None
    limits: ReadLimits
    on_finished: Finished | None = None
    relay: Any = None  # router.relay_server.RelayServer, set by the acceptor
    pending: PendingConnections | None = None
    request_queue_size = 128  # listen() backlog; socketserver's default of 5 drops SYNs
    # Bound and listening already (the supervisor's, one of several on the port with
    # SO_REUSEPORT): served instead of a socket of the server's own.
    listening: socket.socket | None = None
    _tickets: dict[Any, Ticket]  # by socket object: identity, never a reused fd
    _replays: dict[Any, bytes]  # handed over by the engine's acceptor (handoff)
    _tickets_lock: threading.Lock

    def server_bind(self) -> None:
        if self.listening is None:
            super().server_bind()
            return
        if self.socket is not None:
            self.socket.close()  # the one socketserver made, never bound
        self.socket = self.listening
        if self.ae.network_timeout is not None:
            self.socket.settimeout(self.ae.network_timeout)  # as pynetdicom's own does
        self.server_address = self.socket.getsockname()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """In the accept loop: refuse a connection past the pending counts before any
        thread is started for it (socketserver then closes it)."""
        if self.pending is None:
            return True
        source = client_address[0] if isinstance(client_address, tuple) else "?"
        admitted = self.pending.admit(source)
        if isinstance(admitted, str):
            metrics.CONNECTIONS_DROPPED.labels(admitted).inc()
            log.warning("closing a connection from %s at once: %s connections from it (or "
                        "%d in all) have not finished their association request",
                        source, self.pending.per_source, self.pending.total)
            return False
        with self._tickets_lock:
            self._tickets[request] = admitted
        return True

    def handoff(self, request: Any, client_address: Any, replay: bytes) -> None:
        """Serve, in the calling thread, a connection whose A-ASSOCIATE-RQ (`replay`, the
        bytes read so far) the engine's acceptor already read: its TLS handshake is done and
        it left the pending counts."""
        with self._tickets_lock:
            self._replays[request] = replay
        try:
            GuardedRequestHandler(request, client_address, self)
        finally:
            with self._tickets_lock:
                self._replays.pop(request, None)

    def take_replay(self, request: Any) -> bytes:
        with self._tickets_lock:
            return self._replays.pop(request, b"")

    def ticket(self, request: Any) -> Ticket | None:
        """The pending ticket of a connection (its socket as the handler got it)."""
        with self._tickets_lock:
            return self._tickets.get(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._tickets_lock:
            ticket = self._tickets.pop(request, None)
        try:
            if self.tls is not None:
                request = self.tls.handshake(request, client_address)
                if request is None:
                    return
            if ticket is not None:
                with self._tickets_lock:
                    self._tickets[request] = ticket
            super().finish_request(request, client_address)
        finally:
            if ticket is not None:
                with self._tickets_lock:
                    self._tickets.pop(request, None)
                ticket.release()


def start_server(
    ae: AE,
    address: tuple[str, int],
    handlers: list[Any],
    tls: TLSListener | None,
    limits: ReadLimits,
    on_finished: Finished | None = None,
    pending: PendingConnections | None = None,
    backlog: int = 128,
    listening: socket.socket | None = None,
    serve: bool = True,
) -> RouterAssociationServer:
    """Like AE.start_server(block=False), with the TLS hook and the guards in place before
    the first accept; on `listening` when given, else on a socket bound to `address`.
    With serve=False it accepts nothing itself: the engine's acceptor hands it connections."""
    # bind() and listen() run inside the constructor: these must be on the class by then.
    RouterAssociationServer.request_queue_size = backlog
    RouterAssociationServer.listening = listening
    server = ae.make_server(address, evt_handlers=handlers, server_class=RouterAssociationServer,
                            request_handler=GuardedRequestHandler)
    assert isinstance(server, RouterAssociationServer)
    server.tls = tls
    server.limits = limits
    server.on_finished = on_finished
    server.pending = pending
    server._tickets, server._replays, server._tickets_lock = {}, {}, threading.Lock()
    if not serve:  # only handed connections (handoff): it never accepts, nor shuts down
        return server
    ae._servers.append(server)  # so that server.shutdown() finds itself, as pynetdicom expects
    thread = threading.Thread(target=server.serve_forever, name="acceptor-server", daemon=True,
                              kwargs={"poll_interval": SERVER_POLL_SECONDS})
    thread.start()
    return server
