"""RFC 5424 syslog for the audit trail: UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).

One background thread sends; callers only append to a bounded queue. When the receiver is
slow or away, the oldest messages are dropped and counted, so a dead syslog server costs the
router neither memory nor time. The audit JSON lines file remains the complete record.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections import deque
from datetime import UTC, datetime

from router.core import metrics
from router.core.audit_config import SyslogConfig
from router.core.errors import TLSConfigError
from router.core.peer_address import host_port
from router.core.tls_dates import SYSLOG_REFUSES, check_certificate_dates

# At a stop, what is queued goes out for up to this long while the server takes it (a server
# that fails ends it at once): 2 s was cut short on a starved host, and records then went to
# the JSON lines file only.
CLOSE_SECONDS = 5.0
MAX_UDP_PAYLOAD = 65_000  # an IPv4 datagram holds 65,507 octets of payload
_BOM = b"\xef\xbb\xbf"

log = logging.getLogger(__name__)

class OnceWarner:
    """Warn once per problem `key` until it is cleared again by `recovered`."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def warn(self, key: str, message: str, *args: object) -> None:
        with self._lock:
            if key in self._active:
                return
            self._active.add(key)
        self._log.warning(message, *args)

    def recovered(self, key: str, message: str, *args: object) -> None:
        with self._lock:
            if key not in self._active:
                return
            self._active.discard(key)
        self._log.info(message, *args)


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or the NILVALUE."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def format_rfc5424(
    text: str,
    *,
    facility: int,
    severity: int,
    app_name: str,
    msgid: str,
    hostname: str | None = None,
    procid: str | None = None,
    timestamp: datetime | None = None,
) -> bytes:
    """One syslog message: HEADER SP "-" (no structured data) SP MSG.

    MSG is sent as is when it is ASCII, else as UTF-8 after the BOM that RFC 5424 requires.
    """
    when = (timestamp or datetime.now(UTC)).astimezone(UTC)
    stamp = when.isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = " ".join([
        f"<{facility * 8 + severity}>1",
        stamp,
        _header_field(hostname if hostname is not None else socket.gethostname(), 255),
        _header_field(app_name, 48),
        _header_field(procid if procid is not None else "-", 128),
        _header_field(msgid, 32),
        "-",
    ])
    body = text.encode("ascii") if text.isascii() else _BOM + text.encode("utf-8")
    return header.encode("ascii") + b" " + body


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 3.4.1 / RFC 5425 4.3 framing: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode("ascii") + b" " + message


def _peer_closed(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether a stream's peer has gone away. Syslog servers never send, so readable = closed."""
    try:
        readable, _, _ = select.select([sock], [], [], wait)
        if not readable:
            return False
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            return sock.recv(4096) == b""
        finally:
            sock.settimeout(timeout)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False  # only TLS records such as session tickets: still open
    except (OSError, ValueError):
        return True


class SyslogSender:
    """Sends formatted messages from a background thread, in order, reconnecting with backoff."""

    def __init__(self, config: SyslogConfig) -> None:
        self.config = config
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = 0.0
        self._dropped = 0
        self._sent = 0
        self._sock: socket.socket | None = None
        self._tls: ssl.SSLContext | None = None
        self._renewed = False  # reload_tls: reconnect with the new certificate
        self._warn = OnceWarner(log)
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def _lose(self, count: int) -> None:
        """Count messages given up on (with self._cond held)."""
        self._dropped += count
        metrics.AUDIT_FAILURES.labels("syslog").inc(count)

    def _left_at_close(self) -> None:
        """Give up on what is still queued at close (with self._cond held), and say so."""
        if self._queue:
            log.warning("stopping: %d audit message(s) not sent to syslog at %s; the JSON "
                        "lines file has them", len(self._queue),
                        host_port(self.config.host, self.config.resolved_port))
        self._lose(len(self._queue))
        self._queue.clear()

    @property
    def dropped(self) -> int:
        """Messages given up on: the queue overflowed, too large for UDP, or left at close."""
        with self._cond:
            return self._dropped

    @property
    def sent(self) -> int:
        with self._cond:
            return self._sent

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def submit(self, message: bytes) -> None:
        """Queue one RFC 5424 message (unframed). Never blocks, never raises."""
        with self._cond:
            if self._closing:
                self._lose(1)
                return
            if len(self._queue) >= self.config.queue_size:
                self._queue.popleft()
                self._lose(1)
                self._warn.warn("queue", "audit syslog queue full (%d): dropping the oldest "
                                "messages; the JSON lines file still has them",
                                self.config.queue_size)
            self._queue.append(message)
            self._cond.notify()

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Send what is queued for up to `timeout` seconds, then stop."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + self.config.timeout + 1.0)

    def _run(self) -> None:
        backoff = 0.25
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or (self._closing and time.monotonic() > self._deadline):
                    self._left_at_close()
                    break
                message = self._queue[0]  # peeked: removed only once it went out
            if self._deliver(message):
                backoff = 0.25
                continue
            with self._cond:
                if self._closing:  # the server is down: don't hold shutdown for it
                    self._left_at_close()
                    break
                self._cond.wait(backoff)
            backoff = min(backoff * 2, 30.0)
        self._disconnect()

    def _deliver(self, message: bytes) -> bool:
        """Send the head of the queue; False when it must be retried later."""
        cfg = self.config
        try:
            if cfg.transport == "udp" and len(message) > MAX_UDP_PAYLOAD:
                self._warn.warn("size", "an audit message of %d octets is too large for syslog "
                                "over UDP; it is only in the JSON lines file", len(message))
                ok = False
            else:
                self._send(message)
                ok = True
        except Exception as exc:  # the thread must survive anything the network does
            self._disconnect()
            self._warn.warn("send", "audit syslog to %s over %s failed (%s); retrying. The "
                            "JSON lines file has every message",
                            host_port(cfg.host, cfg.resolved_port), cfg.transport, exc)
            return False
        with self._cond:
            if self._queue and self._queue[0] is message:
                self._queue.popleft()
            if ok:
                self._sent += 1
            else:
                self._lose(1)
        if ok:
            self._warn.recovered("send", "audit syslog to %s delivers again",
                                 host_port(cfg.host, cfg.resolved_port))
        return True

    def _send(self, message: bytes) -> None:
        with self._cond:
            renewed, self._renewed = self._renewed, False
        if self._sock is not None and self.config.transport != "udp" and (
                renewed or _peer_closed(self._sock)):
            self._disconnect()
        if self._sock is None:
            self._sock = self._connect()
        if self.config.transport == "udp":
            self._sock.send(message)
        else:
            self._sock.sendall(octet_counted(message))

    def _connect(self) -> socket.socket:
        cfg = self.config
        address = (cfg.host, cfg.resolved_port)
        if cfg.transport == "udp":
            family, kind, proto, _, target = socket.getaddrinfo(
                cfg.host, cfg.resolved_port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, kind, proto)
            sock.settimeout(cfg.timeout)
            sock.connect(target)
            return sock
        sock = socket.create_connection(address, timeout=cfg.timeout)
        if cfg.transport == "tcp":
            return sock
        try:
            tls = self._tls_context().wrap_socket(sock, server_hostname=cfg.host)
        except BaseException:
            sock.close()
            raise
        # With TLS 1.3 a server refuses our certificate only after the handshake: look once.
        if _peer_closed(tls, wait=min(0.25, cfg.timeout)):
            tls.close()
            raise ConnectionError("the server closed the TLS connection after the handshake "
                                  "(does it require or refuse our client certificate?)")
        return tls

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = _client_context(self.config)
        return self._tls

    def reload_tls(self) -> None:
        """SIGHUP: reconnect with the certificate as the files are now; if they do not load,
        the one in use stays (as the DICOM listener's, router/acceptor/tls_listener.py)."""
        if self.config.transport != "tls":
            return
        try:
            context = _client_context(self.config)
            if self.config.cert is not None:
                # Out of its dates it loads without a word, and the server then refuses
                # every connection: keep the one in use (at start it is only a warning).
                check_certificate_dates(self.config.cert, "audit.syslog.cert", SYSLOG_REFUSES)
        except TLSConfigError as exc:  # out of its dates
            log.error("audit syslog: TLS reload refused, the previous certificate stays in "
                      "use: %s", exc)
            return
        except (OSError, ssl.SSLError) as exc:
            log.error("audit syslog: TLS reload refused, the previous certificate stays in "
                      "use: audit.syslog.cert: %s and its key cannot be used: %s",
                      self.config.cert, exc)
            return
        with self._cond:
            # The sender thread owns the socket: it reconnects before its next message.
            self._tls, self._renewed = context, True
        log.info("audit syslog: TLS certificates reloaded")

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


def _client_context(cfg: SyslogConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cfg.ca) if cfg.ca is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert is not None:
        context.load_cert_chain(str(cfg.cert), str(cfg.key) if cfg.key is not None else None)
    return context
