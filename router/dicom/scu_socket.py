"""The socket under an outbound association (store_client.py): connect (TCP, then TLS when
asked), send with a deadline, receive into the engine, and wait for the answer to an
A-ASSOCIATE-RQ. Every wait has a deadline; a failure is an `AssociationFailed` or the
engine's own events."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from dataclasses import dataclass

from router.dicom.engine import Association, Event, ProviderAborted, RemoteProtocolError
from router.dicom.quick_ack import ack_now
from router.dicom.store_failures import AssociationFailed

RECEIVE_BUFFER = 64 * 1024
PROTOCOL_ERROR = "protocol error"  # what receive() says when the peer's bytes break the protocol


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int
    called_ae: str
    calling_ae: str
    max_pdu: int  # what we accept and advertise
    connect_timeout: float
    dimse_timeout: float
    tls: ssl.SSLContext | None = None
    server_name: str = ""


def connect(peer: Peer) -> socket.socket:
    try:
        sock = socket.create_connection((peer.host, peer.port), timeout=peer.connect_timeout)
    except OSError as exc:
        raise AssociationFailed("connection", f"cannot connect: {describe(exc)}",
                                connected=False) from exc
    # Nagle with delayed ACKs costs ~40 ms per C-STORE (docs/architecture.md).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if peer.tls is None:
        return sock
    try:
        return peer.tls.wrap_socket(sock, server_hostname=peer.server_name or peer.host)
    except ssl.SSLError as exc:
        sock.close()
        raise AssociationFailed("tls", f"TLS handshake failed: {exc.reason or exc}",
                                connected=False, tls_error=exc) from exc
    except OSError as exc:
        sock.close()
        raise AssociationFailed("connection", f"TLS handshake failed: {describe(exc)}",
                                connected=False) from exc

def describe(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__

def send_all(sock: socket.socket, data: bytes, timeout: float) -> None:
    if data:
        sock.settimeout(timeout)
        sock.sendall(data)

def is_alert(exc: ssl.SSLError) -> bool:
    """An error the peer's TLS stack reported, not a bare close of the connection."""
    return not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)

def receive(sock: socket.socket, engine: Association, buffer: bytearray,
             deadline: float, *, tls_alerts: bool = False) -> list[Event] | None:
    """`tls_alerts`: raise a TLS alert (ssl.SSLError) instead of ending the association."""
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    sock.settimeout(left)
    try:
        n = sock.recv_into(buffer)
    except TimeoutError:
        return None
    except ssl.SSLError as exc:
        if tls_alerts:
            raise
        return engine.transport_failed(f"transport failure: {exc}")
    except OSError as exc:
        return engine.transport_failed(f"transport failure: {exc}")
    if n:
        ack_now(sock)  # a DCMTK destination's Nagle would hold its RSP 40 ms (quick_ack.py)
    try:
        return engine.receive_data(memoryview(buffer)[:n] if n else b"")
    except RemoteProtocolError as exc:
        if exc.to_send:
            with contextlib.suppress(OSError):
                send_all(sock, exc.to_send, 1.0)
        return [*exc.events, ProviderAborted(f"{PROTOCOL_ERROR}: {exc}")]

def negotiate(sock: socket.socket, engine: Association, deadline: float) -> Event | None:
    """The peer's answer to our RQ: AssociationAccepted, AssociationRejected, Aborted,
    something that ended the association (ProviderAborted/ConnectionClosed), or None
    when the deadline passed."""
    buffer = bytearray(RECEIVE_BUFFER)
    while True:
        events = receive(sock, engine, buffer, deadline, tls_alerts=True)
        if events is None:
            return None
        if events:  # the first is the answer, or what ended the association instead
            return events[0]
        if engine.should_close:
            return ProviderAborted("closed")
