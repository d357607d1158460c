"""The dates of the certificates the router serves and presents: a certificate out of its
dates loads without a word in OpenSSL, and every peer then refuses the router, so it is
refused (served; a renewal to one, presented) or warned of (expiring soon) here."""

from __future__ import annotations

import datetime
from pathlib import Path

from router.core.cert_dates import Validity, certificate_validities
from router.core.config import RouterConfig, TLSBase
from router.core.errors import TLSConfigError

# A served certificate that expires sooner is named in check-config and in the log.
EXPIRY_WARNING = datetime.timedelta(days=14)
CLIENT_REFUSES = "the peer would refuse it"
SYSLOG_REFUSES = "the syslog server would refuse it"


def _dates(path: Path) -> list[Validity]:
    """The dates of each certificate in a cert file: the leaf, then its chain."""
    try:
        return certificate_validities(path.read_bytes())
    except (OSError, ValueError):
        return []  # unreadable or not PEM: _load_identity names the problem


def _soonest(path: Path) -> Validity | None:
    """The dates within which the whole chain in `path` is valid: a CA certificate served
    with the leaf that expires first ends it for every client that trusts only the root."""
    chain = _dates(path)
    if not chain:
        return None
    return Validity(max(d.not_before for d in chain), min(d.not_after for d in chain))


def check_dates(config: TLSBase, where: str, refused_by: str) -> None:
    if config.cert is not None:
        check_certificate_dates(config.cert, f"{where}.cert", refused_by)


def check_certificate_dates(cert: Path, key: str, refused_by: str) -> None:
    """OpenSSL serves an expired or not yet valid certificate of its own without a word, and
    every client (or the destination) then refuses the router: refuse it here, at
    check-config, run and reload, so that a reload keeps the certificate in use. Each
    certificate of a chain file counts: an expired intermediate was served as well."""
    now = datetime.datetime.now(datetime.UTC)
    for index, dates in enumerate(_dates(cert)):
        which = (str(cert) if index == 0 else
                 f"{cert} holds a CA certificate (number {index + 1} of its chain) that")
        span = f"valid from {_day(dates.not_before)} to {_day(dates.not_after)}"
        if dates.not_after < now:
            raise TLSConfigError(f"{key}: {which} expired on {_day(dates.not_after)} "
                                 f"({span}): {refused_by}; renew it")
        if dates.not_before > now:
            raise TLSConfigError(f"{key}: {which} is not valid before "
                                 f"{_day(dates.not_before)} ({span}): {refused_by}; "
                                 "check the clock or the certificate")


def _day(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def certificate_expiry(config: TLSBase) -> float | None:
    """When the certificate served with `config` expires (Unix time), for the gauge: the
    soonest of its chain."""
    dates = _soonest(config.cert) if config.cert is not None else None
    return dates.not_after.timestamp() if dates is not None else None


def expiry_warnings(config: RouterConfig) -> list[str]:
    """The certificates the router serves that expire within EXPIRY_WARNING, and those it
    presents as a client that are out of their dates or expire within it. A client
    certificate out of its dates is a warning at start, not a refusal: one destination's
    would stop the whole router, and a lax peer may take it. A renewal to one is refused
    (router/core/client_tls.py)."""
    notes = []
    for key, path in _served(config):
        notes += _expires_soon(key, path)
    for key, path, refused_by in _presented(config):
        try:
            check_certificate_dates(path, key, refused_by)
        except TLSConfigError as exc:
            notes.append(str(exc))
            continue
        notes += _expires_soon(key, path)
    return notes


def _served(config: RouterConfig) -> list[tuple[str, Path]]:
    served = [("listen.tls.cert", config.listen.tls.cert if config.listen.tls.mode != "off"
               else None), ("console.tls_cert", config.console.tls_cert)]
    return [(key, path) for key, path in served if path is not None]


def _presented(config: RouterConfig) -> list[tuple[str, Path, str]]:
    tls_of = [(f"destinations.{name}.tls", getattr(dest, "tls", None))
              for name, dest in config.destinations.items()]
    tls_of += [(f"known_aes.{title}.tls", known.tls) for title, known in config.known_aes.items()]
    found = [(f"{where}.cert", tls.cert, CLIENT_REFUSES) for where, tls in tls_of
             if tls is not None and tls.mode != "off" and tls.cert is not None]
    syslog = config.audit.syslog
    if syslog is not None and syslog.transport == "tls" and syslog.cert is not None:
        found.append(("audit.syslog.cert", syslog.cert, SYSLOG_REFUSES))
    return found


def _expires_soon(key: str, path: Path) -> list[str]:
    now = datetime.datetime.now(datetime.UTC)
    dates = _soonest(path)
    if dates is None or not now <= dates.not_after < now + EXPIRY_WARNING:
        return []
    days = (dates.not_after - now).days
    return [f"{key}: {path} expires on {_day(dates.not_after)} (in {days} days): "
            "renew it and send SIGHUP"]
