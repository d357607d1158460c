"""Who may talk to the router: allowlists, certificate-to-AE binding, per-AE limits, users.

Each rejection carries the A-ASSOCIATE-RJ (result, source, reason) PS3.8 Table 9-21 defines:
  (1, 1, 3) calling AE title not recognised  - calling AE not allowed, not the one the
                                              client certificate may use, or no AE title
                                              (empty, control characters, backslash)
  (1, 1, 7) called AE title not recognised   - called AE not allowed, or no AE title
  (1, 1, 1) no reason given                  - source address not allowed, user identity
                                              missing or wrong (the standard has no code)
  (2, 3, 2) local limit exceeded             - too many associations from this calling AE
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from router.acceptor.passcodes import PasscodeCheck
from router.acceptor.passcodes import hash_passcode as hash_passcode  # `hash-passcode`
from router.acceptor.session import AssociationSession
from router.core.config import ListenConfig, UserConfig
from router.core.dimse_status import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    LOCAL_LIMIT_EXCEEDED,
    NO_REASON_GIVEN,
    Reject,
)
from router.core.log_safety import escape
from router.core.peer_address import source_network
from router.core.shared_counts import SharedCounts
from router.core.tls import peer_identities


@dataclass(frozen=True)
class Rejection:
    reject: Reject  # the A-ASSOCIATE-RJ (result, source, reason): router/core/dimse_status.py
    label: str  # bounded metric label
    message: str

    @property
    def result(self) -> int:
        return self.reject.result


class AccessPolicy:
    def __init__(self, config: ListenConfig, counts: SharedCounts | None = None,
                 column: int = 0) -> None:
        # Open associations by calling AE, shared by every acceptor (or private).
        self._active = counts if counts is not None \
            else SharedCounts(2 * config.max_associations, 1)
        self._column = column
        self._passcodes = PasscodeCheck()
        self.reconfigure(config)

    def reconfigure(self, config: ListenConfig) -> None:
        """New rules for new associations; the per-AE counts of open ones are kept."""
        self.networks = [source_network(n) for n in config.allowed_sources or []]
        self.users: dict[str, UserConfig] = {u.username: u for u in config.users}
        self.config = config

    # --- association requests --------------------------------------------------------------

    def check(self, session: AssociationSession) -> Rejection | None:
        calling, called, source = session.calling_ae, session.called_ae, session.address
        c = self.config
        fault = ae_title_fault(calling)
        if fault is not None:
            return Rejection(CALLING_AE_NOT_RECOGNISED, "calling_ae", f"the calling AE {fault}")
        fault = ae_title_fault(called)
        if fault is not None:
            return Rejection(CALLED_AE_NOT_RECOGNISED, "called_ae", f"the called AE {fault}")
        if self.networks and not self._source_allowed(source):
            return Rejection(NO_REASON_GIVEN, "source", f"source address {source} is not allowed")
        if c.allowed_calling_ae is not None and calling not in c.allowed_calling_ae:
            return Rejection(CALLING_AE_NOT_RECOGNISED, "calling_ae",
                             f"calling AE {calling!r} is not allowed")
        if c.allowed_called_ae is not None and called not in c.allowed_called_ae:
            return Rejection(CALLED_AE_NOT_RECOGNISED, "called_ae",
                             f"called AE {called!r} is not allowed")
        own = session.own_ae.strip()
        if c.require_called_ae and called.strip() != own:
            return Rejection(CALLED_AE_NOT_RECOGNISED, "called_ae",
                             f"called AE {called!r} is not {own!r}")
        if c.tls.ae_titles:
            rejection = self._check_certificate_ae(session.certificate, calling)
            if rejection is not None:
                return rejection
        if c.require_user_identity and not session.user_identity:
            return Rejection(NO_REASON_GIVEN, "user_identity", "no user identity was negotiated")
        limit = c.max_associations_per_calling_ae
        if limit is not None and self._active.count(_key(calling)) >= limit:
            return Rejection(LOCAL_LIMIT_EXCEEDED, "per_ae_limit",
                             f"{calling!r} already has {limit} associations")
        return None

    def _source_allowed(self, source: str) -> bool:
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)

    def _check_certificate_ae(self, certificate: dict[str, Any] | None,
                              calling: str) -> Rejection | None:
        identities = peer_identities(certificate)
        allowed = {ae for name in identities for ae in self.config.tls.ae_titles.get(name, [])}
        if calling not in allowed:
            who = ", ".join(identities) or "no certificate"
            return Rejection(CALLING_AE_NOT_RECOGNISED, "tls_identity",
                             f"certificate {who} may not use calling AE {calling!r}")
        return None

    # --- bookkeeping for the per-AE limit -----------------------------------------------------

    def opened(self, calling: str) -> None:
        self._active.try_add(self._column, _key(calling), None, None)

    def closed(self, calling: str) -> None:
        self._active.remove(self._column, _key(calling))

    def open_count(self, calling: str) -> int:
        return self._active.count(_key(calling))

    # --- user identity (EVT_USER_ID) -------------------------------------------------------

    def verify_user(self, kind: int, primary: bytes, secondary: bytes | None) -> bool:
        """Username and passcode (kind 2) against the hashed list; other kinds are refused."""
        if kind != 2 or secondary is None:
            return False
        username = primary.decode(errors="replace")
        user = self.users.get(username)
        return self._passcodes.matches(username, secondary,
                                       None if user is None else user.passcode_hash)


def ae_title_fault(title: str) -> str | None:
    """What makes `title` no AE title (PS3.5 6.2), or None. Such a title would reach job
    headers, logs and the live status: a newline forges lines, ESC drives terminals."""
    # An AE title of spaces only shall not be used; nothing could answer it.
    if not title.strip():
        return "is empty"
    # The default repertoire without control characters and without the backslash (the
    # value separator); the engine has refused non-ASCII bytes already.
    if "\\" in title or any(ord(c) < 0x20 or ord(c) >= 0x7F for c in title):
        return f"'{escape(title)}' holds a control character or a backslash"
    return None


def _key(calling: str | bytes) -> bytes:
    return calling if isinstance(calling, bytes) else calling.encode(errors="replace")
