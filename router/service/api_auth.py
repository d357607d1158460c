"""Who may use the operator API (/api/...) on the HTTP port.

With `api.token_file`, a request must carry `Authorization: Bearer <the file's token>`; the
file is read at each request, so a new token takes effect without a restart. Without it, only
clients on the loopback address may (the port binds 127.0.0.1 by default); a request from
elsewhere is refused, never trusted for coming through a proxy.

Cross-site requests: a POST must say `Content-Type: application/json`, which a web page on
another origin cannot send without a CORS preflight that this server never answers, so a
browser on the router's own machine cannot be tricked into acting. A page whose own name
was made to resolve to 127.0.0.1 (DNS rebinding) is same-origin for the browser, so
loopback-trusted requests must also name this machine in `Host` (a loopback name or address,
or `metrics.host`) and carry no `Origin`, or that same host.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from router.core.peer_address import plain
from router.service.http_types import Request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    actor: str | None  # who, for the audit trail; None: refused
    why: str = ""


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(plain(address)).is_loopback  # ::ffff:127.0.0.1 too
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name in a Host header or an origin's netloc, without port or brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else host


def _local_name(name: str, configured: str) -> bool:
    return name in ("localhost", configured.lower()) or name.endswith(".localhost") \
        or _loopback(name)


def rebinding(request: Request, configured_host: str = "") -> str | None:
    """Why a loopback request looks like a page on another site (DNS rebinding), or None."""
    host = request.headers.get("host")
    if host is not None and not _local_name(_host_name(host), configured_host):
        return (f"Host {host[:100]!r} is not this machine (use 127.0.0.1 or localhost, or "
                "set api.token_file)")
    origin = request.headers.get("origin")
    if origin is not None and (host is None
                               or urlsplit(origin).netloc.lower() != host.strip().lower()):
        return f"a request from the web page at {origin[:100]!r} is refused"
    return None


def read_token(path: Path) -> str:
    """The token in a file (surrounding whitespace removed); OSError if unreadable."""
    return path.read_text(encoding="utf-8").strip()


class ApiAuth:
    def __init__(self, token_file: Path | None, host: str = "") -> None:
        self.token_file = token_file
        self.host = host  # metrics.host: also a name of this machine in Host headers

    def check(self, request: Request) -> Verdict:
        named = request.headers.get("x-dicom-router-user", "").strip()[:64]
        if self.token_file is None:
            if not _loopback(request.client):
                return Verdict(None, "the API takes requests from this machine only (set "
                                     "api.token_file to allow others with a token)")
            why = rebinding(request, self.host)
            if why is not None:
                return Verdict(None, why)
            return Verdict(f"local:{named}" if named else "local")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return Verdict(None, "no bearer token (Authorization: Bearer <token>)")
        try:
            token = read_token(self.token_file)
        except OSError as exc:
            log.error("cannot read api.token_file %s (%s): every API request is refused",
                      self.token_file, exc)
            return Verdict(None, "the router cannot read its token file")
        if not token or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return Verdict(None, "wrong bearer token")
        return Verdict(f"token:{named}" if named else "token")

    @staticmethod
    def cross_site(request: Request) -> bool:
        """A POST that a page on another site could have sent (not JSON)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        return request.method == "POST" and ctype != "application/json"
