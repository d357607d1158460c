"""Acknowledge a DICOM peer's TCP segments at once instead of 40 ms later.

DCMTK leaves Nagle's algorithm on since 3.6.2 (unless the process sees TCP_NODELAY=1 in its
environment) and writes a PDU's header and its body in separate send() calls; Nagle holds
the body until the header is acknowledged, and Linux delays that ACK by 40 ms while the
receiver has nothing to send back. So every C-STORE from a DCMTK-based modality, and every
C-STORE-RSP from a DCMTK-based PACS, would cost 40 ms: 200 x 10 KB from a default `storescu`
took 8.96 s into the router before, 0.28 s with this (docs/benchmark.md, "DCMTK's
defaults, Nagle on"). TCP_QUICKACK is not sticky (the kernel returns to delayed ACKs once it
sees a request-response exchange), so it is set again after every receive: one system call.
"""

from __future__ import annotations

import socket
import ssl

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def quick_ack_applies(sock: socket.socket) -> bool:
    """True for a TCP socket on a system with TCP_QUICKACK (not a socket pair, not macOS)."""
    return _QUICKACK is not None and sock.family in (socket.AF_INET, socket.AF_INET6)


def ack_now(sock: socket.socket) -> None:
    """After a receive: send the ACK now, and keep acknowledging at once for a while."""
    if _QUICKACK is not None:
        # A plain try (6 ns) rather than contextlib.suppress (280 ns): this runs after every
        # receive on the C-STORE path.
        try:  # noqa: SIM105
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass  # closed meanwhile: the next receive says so


class _QuickAckSocket(socket.socket):
    __slots__ = ()  # socket.socket's own layout: an instance's class may be switched to it

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if data:
            ack_now(self)
        return data


class _QuickAckSSLSocket(ssl.SSLSocket):
    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        data = super().recv(buflen, flags)
        if data:
            ack_now(self)
        return data


def ack_every_receive(sock: socket.socket) -> None:
    """For a socket another library reads (pynetdicom's SCU associations): its recv asks for
    a quick ACK from now on. The instance's class becomes a subclass with that recv and the
    same layout, so the library's isinstance checks (ssl.SSLSocket) still hold."""
    if not quick_ack_applies(sock):
        return
    if type(sock) is socket.socket:
        sock.__class__ = _QuickAckSocket
    elif type(sock) is ssl.SSLSocket:
        sock.__class__ = _QuickAckSSLSocket
