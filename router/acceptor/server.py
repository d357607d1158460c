"""The accept loop on this acceptor's listening socket (one of the supervisor's SO_REUSEPORT
sockets, router/service/ports.py): each connection admitted against the pending counts
(router/dicom/pending.py) in this loop, before any thread is started for it, then served by
an `EngineConnection` on its own thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter

from router.acceptor.connection import EngineConnection
from router.acceptor.connection_settings import AcceptorServices
from router.core import metrics
from router.core.peer_address import plain_peer
from router.core.process_util import SERVER_POLL_SECONDS
from router.dicom.pending import PendingConnections, source_of

log = logging.getLogger(__name__)

# An aborted connection's thread only has to notice its closed socket and settle.
SETTLE_SECONDS = 5.0


class EngineServer:
    def __init__(self, listener: socket.socket, services: AcceptorServices,
                 pending: PendingConnections) -> None:
        self.listener = listener
        self.services = services
        self.pending = pending
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[EngineConnection] = set()
        self._thread = threading.Thread(target=self._accept_loop, name="acceptor-server",
                                        daemon=True)

    def start(self) -> None:
        # A timeout, so that shutdown() is seen within SERVER_POLL_SECONDS.
        self.listener.settimeout(SERVER_POLL_SECONDS)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, address = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("accepting a connection failed: %s", exc)  # e.g. out of fds
                time.sleep(SERVER_POLL_SECONDS)
                continue
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setblocking(True)
        address = plain_peer(address)
        source = source_of(address[0]) if isinstance(address, tuple) else "?"
        ticket = self.pending.admit(source)
        if ticket == "pending_total" and self._make_room(source):
            ticket = self.pending.admit(source)
        if isinstance(ticket, str):
            metrics.CONNECTIONS_DROPPED.labels(ticket).inc()
            log.warning("closing a connection from %s at once: %s connections from it (or "
                        "%d in all) have not finished their association request",
                        source, self.pending.per_source, self.pending.total)
            sock.close()
            return
        connection = EngineConnection(sock, address, self.services, ticket)
        with self._lock:
            self._connections.add(connection)
        thread = threading.Thread(target=self._run, args=(connection,), daemon=True,
                                  name=f"association-{source}")
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: refuse this one, keep serving
            log.error("cannot start a thread for a connection from %s; closing it", source)
            with self._lock:
                self._connections.discard(connection)
            ticket.release()
            sock.close()

    def _make_room(self, source: str) -> bool:
        """Every place for a pending connection is taken: close this acceptor's oldest
        pending connection from the source holding the most of them, if that is more than
        `source` holds. A flood from many addresses keeps the table full, yet a modality
        that connects (one connection, its request sent at once) still gets in; an attacker
        connecting again only takes the place of one of its own older connections."""
        with self._lock:
            waiting = [c for c in self._connections
                       if c.ticket is not None and not c.ticket.released]
        counts = Counter(c.ticket.source for c in waiting if c.ticket is not None)
        heaviest = max(counts.values(), default=0)
        if heaviest <= counts.get(source, 0):
            return False
        victim = min((c for c in waiting
                      if c.ticket is not None and counts[c.ticket.source] == heaviest),
                     key=lambda c: c.accepted_at)
        assert victim.ticket is not None
        victim.ticket.release()
        victim.abort()
        metrics.CONNECTIONS_DROPPED.labels("pending_evicted").inc()
        log.warning("pending connections full: closed the oldest of %d from %s to admit one "
                    "from %s", heaviest, victim.ticket.source, source)
        return True

    def _run(self, connection: EngineConnection) -> None:
        try:
            connection.run()
        finally:
            with self._lock:
                self._connections.discard(connection)

    def shutdown(self) -> None:
        """No new connections: the accept loop ends and the listening socket is closed."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.listener.close()

    def connections(self) -> list[EngineConnection]:
        with self._lock:
            return list(self._connections)

    def drain(self, grace: float) -> None:
        """Let established associations finish, up to `grace` seconds; then abort the rest.
        A connection still negotiating has no work in progress: it is aborted at once."""
        deadline = time.monotonic() + grace
        while True:
            remaining = self.connections()
            for connection in remaining:
                if not connection.established:
                    connection.abort()
            if not remaining or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        for connection in self.connections():
            session = connection.session
            log.warning("aborting association from %s after the drain grace period",
                        session.calling_ae if session is not None else connection.address[0])
            connection.abort()
        self._await_settled()

    def _await_settled(self) -> None:
        """Wait (bounded) for aborted connections' threads to end: each settles its
        association, and audits what it received, before the caller closes the trail."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        for connection in self.connections():
            log.warning("the association from %s did not end %.0f s after its abort",
                        connection.address[0], SETTLE_SECONDS)
