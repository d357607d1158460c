"""The console on its own port (`console.port`), optionally HTTPS with the router's TLS
machinery (router/core/tls.py). The TLS handshake happens in the connection's own thread with a
deadline, never in the accept loop, so a client that never speaks TLS stalls nobody."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

from router.core import metrics
from router.core.config import ListenerTLS
from router.core.console_config import ConsoleConfig
from router.core.errors import TLSConfigError
from router.core.process_util import SERVER_POLL_SECONDS
from router.core.tls import server_context
from router.core.tls_dates import certificate_expiry
from router.service.http_endpoint import AppHandler, Server
from router.service.http_types import App

log = logging.getLogger(__name__)
HANDSHAKE_SECONDS = 10.0


def tls_context(settings: ConsoleConfig) -> ssl.SSLContext | None:
    if settings.tls_cert is None:
        return None
    tls = ListenerTLS(mode="tls", cert=settings.tls_cert, key=settings.tls_key,
                      key_password_file=settings.tls_key_password_file)
    context = server_context(tls, "console")
    expiry = certificate_expiry(tls)  # beside the DICOM listener's, for the same alert
    if expiry is not None:
        metrics.TLS_CERTIFICATE_EXPIRY.labels("console").set(expiry)
    return context


class _TlsServer(Server):
    context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's thread (ThreadingMixIn): handshake here, with a deadline.
        context = self.context  # one read: a SIGHUP may swap it meanwhile
        if context is not None:
            request.settimeout(HANDSHAKE_SECONDS)
            try:
                request = context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.info("console: TLS handshake with %s failed: %s", client_address[0], exc)
                return
            request.settimeout(None)
        super().finish_request(request, client_address)


class ConsoleServer:
    def __init__(self, settings: ConsoleConfig, app: App) -> None:
        assert settings.port is not None
        handler = type("ConsoleHandler", (AppHandler,), {"apps": [app]})
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        server_class = type("ConsoleHttpServer", (_TlsServer,), {"address_family": family})
        self.server = server_class((settings.host, settings.port), handler)
        self.settings = settings
        self.server.context = tls_context(settings)
        self.scheme = "https" if self.server.context is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, name="console",
                                       kwargs={"poll_interval": SERVER_POLL_SECONDS},
                                       daemon=True)

    def reload_tls(self) -> None:
        """SIGHUP: the next connections get the certificate as the files are now; if they
        do not load, the one in use stays (as the DICOM listener's, tls_listener.py)."""
        if self.server.context is None:
            return
        try:
            self.server.context = tls_context(self.settings)
        except TLSConfigError as exc:
            log.error("console: TLS reload refused, the previous certificate stays in use: %s",
                      exc)
            return
        log.info("console: TLS certificate reloaded")

    def start(self) -> None:
        self.thread.start()
        log.info("console on %s://%s:%d/console/", self.scheme,
                 *self.server.server_address[:2])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
