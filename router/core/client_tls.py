"""Client TLS contexts (destinations, relay upstreams, move destinations), built once per load.

A context built for every association read the files each time: a key replaced mid-rotation
broke every delivery and relay to that peer with a traceback, even after the supervisor had
refused the reload and said that the old certificates stay in use. Here a context is built
at its first use and once more after each SIGHUP (`request_reload`); when the files no longer
load, the last good context stays, and the refusal is logged once, not at every association.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass

from router.core.config import ClientTLS
from router.core.errors import TLSConfigError
from router.core.tls import client_context
from router.core.tls_dates import CLIENT_REFUSES, check_certificate_dates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    config: ClientTLS
    generation: int
    context: ssl.SSLContext | None  # None: never loaded; `error` says why
    error: str = ""


class ClientContexts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.generation = 0

    def request_reload(self) -> None:
        """SIGHUP: each context is built again at its next use (safe in a signal handler)."""
        self.generation += 1

    def get(self, config: ClientTLS, where: str) -> ssl.SSLContext:
        """The context for the TLS settings at config key `where` ("destinations.pacs.tls");
        TLSConfigError when its material has never loaded (the message names the files)."""
        with self._lock:
            entry = self._entries.get(where)
            if entry is None or entry.config != config or entry.generation != self.generation:
                entry = self._entries[where] = self._load(config, where, entry)
        if entry.context is None:
            raise TLSConfigError(entry.error)
        return entry.context

    def _load(self, config: ClientTLS, where: str, old: _Entry | None) -> _Entry:
        try:
            context = client_context(config, where)
            if old is not None and old.context is not None and config.cert is not None:
                # A renewal to a certificate out of its dates loaded without a word, and
                # the peer then refused every handshake: keep the one in use. A first load
                # takes it (a warning at start): a lax peer may accept it.
                check_certificate_dates(config.cert, f"{where}.cert", CLIENT_REFUSES)
            return _Entry(config, self.generation, context)
        except TLSConfigError as exc:
            if old is not None and old.context is not None:
                log.error("TLS reload of %s refused, the previous certificates stay in use: %s",
                          where, exc)
                return _Entry(config, self.generation, old.context, str(exc))
            log.error("TLS material of %s cannot be used; associations that need it fail "
                      "until it is fixed and SIGHUP is sent: %s", where, exc)
            return _Entry(config, self.generation, None, str(exc))


# One per process: a worker's delivery and relay threads, an acceptor's move senders.
CLIENT_CONTEXTS = ClientContexts()
