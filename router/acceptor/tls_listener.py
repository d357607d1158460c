"""TLS on the listener, with the handshake in each connection's own thread and a deadline.

A handshake in the accept loop would let one client that connects and never speaks TLS
stall every association behind it: the server accepts plain sockets and each connection
thread (router/acceptor/connection.py) wraps its own, bounded by `handshake_timeout`. The
context sits in a holder so SIGHUP can swap in reloaded certificates without touching live
associations.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from router.core import metrics
from router.core.config import ListenerTLS
from router.core.errors import TLSConfigError
from router.core.tls import failure_reason, failure_text, server_context
from router.core.tls_dates import certificate_expiry

log = logging.getLogger(__name__)

FailureHook = Callable[[str, str], None]  # (reason, peer address)


class TLSListener:
    def __init__(self, config: ListenerTLS, on_failure: FailureHook | None = None) -> None:
        self.config = config
        self.context = server_context(config)
        self.on_failure = on_failure
        self._lock = threading.Lock()
        _publish_expiry(config)

    def reload(self, config: ListenerTLS | None = None) -> bool:
        """Build the context again from `config` (the reloaded listen.tls; the current one
        when None): its files are read again, its CRL, versions, ciphers and handshake
        timeout apply to new connections. If it fails, the old context and settings stay."""
        config = config or self.config
        try:
            context = server_context(config)
        except TLSConfigError as exc:
            log.error("TLS reload refused, the previous certificates stay in use: %s", exc)
            return False
        with self._lock:
            self.context, self.config = context, config
        _publish_expiry(config)
        log.info("TLS certificates reloaded; live associations keep their sessions")
        return True

    def handshake(self, sock: socket.socket, address: Any) -> ssl.SSLSocket | None:
        """Wrap one accepted connection; None (connection closed) if the handshake fails."""
        with self._lock:
            context, timeout = self.context, self.config.handshake_timeout
        sock.settimeout(timeout)
        try:
            tls = context.wrap_socket(sock, server_side=True)
        except (OSError, ValueError) as exc:
            reason = failure_reason(exc)
            metrics.TLS_FAILURES.labels(reason).inc()
            peer = address[0] if isinstance(address, tuple) else str(address)
            log.warning("TLS handshake from %s failed: %s", peer, failure_text(exc))
            if self.on_failure is not None:
                self.on_failure(reason, peer)
            sock.close()
            return None
        tls.settimeout(None)  # from here on the connection's own timeouts apply
        return tls


def _publish_expiry(config: ListenerTLS) -> None:
    expiry = certificate_expiry(config)
    if expiry is not None:
        metrics.TLS_CERTIFICATE_EXPIRY.labels("dicom").set(expiry)


def peer_certificate(sock: socket.socket) -> dict[str, object] | None:
    """The peer's certificate on a TLS socket (None over plain TCP, or none was sent)."""
    getpeercert = getattr(sock, "getpeercert", None)
    return getpeercert() if getpeercert is not None else None


def peer_certificate_der(sock: socket.socket) -> bytes | None:
    """The peer's certificate as sent (DER), for its fingerprint; None as peer_certificate."""
    getpeercert = getattr(sock, "getpeercert", None)
    return getpeercert(binary_form=True) if getpeercert is not None else None
