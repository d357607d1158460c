"""The acceptor's association-level rules: who is let in, and the counts of who is in.

The methods take an `AssociationSession` (router/acceptor/session.py); the connection
(router/acceptor/connection.py) calls them as its association goes along.
"""

from __future__ import annotations

import logging
import threading

from router.acceptor.access import AccessPolicy, Rejection
from router.acceptor.admission import Admission
from router.acceptor.session import AssociationSession
from router.audit.trail import AuditTrail, TransferTally
from router.core import metrics
from router.core.dimse_status import (
    LOCAL_LIMIT_EXCEEDED,
    NO_REASON_GIVEN,
    TEMPORARY_CONGESTION,
)
from router.core.dn_text import certificate_text
from router.core.log_safety import AUDIT_REPEAT_BUDGET, RepeatLimiter
from router.core.peer_address import host_port
from router.core.shared_counts import SharedCounts
from router.core.status_snapshots import LiveAssociations

log = logging.getLogger(__name__)


class AssociationEvents:
    def __init__(
        self, access: AccessPolicy, admission: Admission, audit: AuditTrail | None = None,
        live: LiveAssociations | None = None, tls: bool = False,
        slots: SharedCounts | None = None, column: int = 0,
    ) -> None:
        self.access = access
        self.admission = admission
        self.audit = audit
        self.live = live
        self.tls = tls
        self._lock = threading.Lock()  # close events and the connection thread may race
        # Associations past their request (negotiating or established): max_associations
        # counts these, not connections still sending their request (router.pending).
        # Shared by every acceptor (router/core/shared_counts.py), or private.
        self._slots = slots if slots is not None \
            else SharedCounts(2 * access.config.max_associations, 1)
        self._column = column
        # The same rejection of the same peer is audited a few times a minute, no more.
        self._audit_limiter = RepeatLimiter(what="audit_rejection")
        # Open associations whose received instances are counted for the audit trail.
        self._tallied: dict[int, AssociationSession] = {}  # by id: sessions are unhashable

    # --- what any inbound association goes through (engine or pynetdicom) ---------------

    def admit(self, session: AssociationSession, proposed_contexts: int) -> Rejection | None:
        """Reject a malformed request, then by access rule (permanent reasons), then by
        load (transient). A rejection is counted, logged and audited here; the caller sends
        the A-ASSOCIATE-RJ it carries."""
        rejection = None
        if not proposed_contexts:  # PS3.8 9.3.2: a request proposes one or more contexts
            rejection = Rejection(NO_REASON_GIVEN, "no_presentation_context",
                                  "the request proposes no presentation context")
        rejection = rejection or self.access.check(session) or self._take_slot(session)
        if rejection is None:
            refusal = self.admission.refusal()
            if refusal is None:
                return None
            metrics.REFUSALS.labels(refusal[0]).inc()
            # rejected-transient, service-provider (presentation), temporary congestion
            rejection = Rejection(TEMPORARY_CONGESTION, refusal[0], refusal[1])
        self.rejected(session, rejection)
        return rejection

    def _take_slot(self, session: AssociationSession) -> Rejection | None:
        config = self.access.config
        limit, per_source = config.max_associations, config.associations_per_source
        source = session.address.encode()
        # Counted by source either way; a per-source limit at or past the total says nothing
        # the total does not (and the rejection then names max_associations).
        refused = self._slots.try_add(self._column, source,
                                      per_source if per_source < limit else None, limit)
        if refused == "key":
            return Rejection(LOCAL_LIMIT_EXCEEDED, "per_source_limit",
                             f"{session.address} already has {per_source} associations "
                             "(listen.max_associations_per_source)")
        if refused is not None:
            return Rejection(LOCAL_LIMIT_EXCEEDED, "max_associations",
                             f"already {limit} associations (listen.max_associations)")
        with self._lock:
            session.slot = source
        return None

    def rejected(self, session: AssociationSession, rejection: Rejection,
                 identity: tuple[int, bytes] | None = None) -> None:
        """`identity`: the refused user identity's (type, primary field), if that was why."""
        metrics.ASSOCIATIONS.labels(metrics.CALLING_AE(session.calling_ae), "rejected").inc()
        metrics.ASSOCIATION_REJECTIONS.labels(rejection.label).inc()
        key = (session.address, rejection.label)
        if self.audit is not None and self._audit_limiter.allow(key, AUDIT_REPEAT_BUDGET):
            dropped = self._audit_limiter.suppressed(key)
            note = f" ({dropped} earlier ones were not audited)" if dropped else ""
            certificate = certificate_text(session.certificate, session.certificate_der)
            if identity is not None:
                # Types 1 and 2 carry a user name; the others' primary field is a credential.
                kind, primary = identity
                user = primary.decode("utf-8", "replace") if kind in (1, 2) else None
                self.audit.user_refused(session.calling_ae, session.called_ae,
                                        session.address, user, rejection.message + note,
                                        certificate)
            else:
                # Load refusals are no security event; access-rule refusals are.
                self.audit.association_rejected(
                    session.calling_ae, session.called_ae, session.address,
                    rejection.message + note, security=rejection.result == 1,
                    tls_certificate=certificate)
        log.warning("rejecting association from %s (%s): %s", session.calling_ae,
                    session.address, rejection.message)

    def malformed_request(self, address: str, reason: str) -> None:
        """A connection dropped before its request could be read (a malformed or oversized
        A-ASSOCIATE-RQ, another PDU first): a security alert, a few a minute per peer."""
        key = (address, "malformed_request")
        if self.audit is None or not self._audit_limiter.allow(key, AUDIT_REPEAT_BUDGET):
            return
        dropped = self._audit_limiter.suppressed(key)
        note = f" ({dropped} earlier ones were not audited)" if dropped else ""
        self.audit.security_alert("association_rejected",
                                  f"malformed association request: {reason}{note}", address)

    def identity_verified(self, kind: int, primary: bytes, secondary: bytes | None) -> bool:
        if not self.access.users:
            return True  # no users configured: identities are not checked (as unbound)
        return self.access.verify_user(kind, primary, secondary)

    def accepted(self, session: AssociationSession) -> None:
        if self.audit is not None:
            session.tally = TransferTally()
            with self._lock:
                self._tallied[id(session)] = session
            self.audit.association_accepted(
                session.calling_ae, session.called_ae, session.address,
                certificate_text(session.certificate, session.certificate_der))
        if self.live is not None:
            session.progress = self.live.opened(session.calling_ae, session.called_ae,
                                                host_port(session.address, session.port), self.tls)
        session.counted = True
        self.access.opened(session.calling_ae)
        calling = metrics.CALLING_AE(session.calling_ae)
        metrics.ASSOCIATIONS.labels(calling, "accepted").inc()
        metrics.ACTIVE_ASSOCIATIONS.labels(calling).inc()

    def settle(self, session: AssociationSession) -> None:
        """Settle an association's counts and audit once, however it ended."""
        with self._lock:
            tally, session.tally = session.tally, None
            counted, session.counted = session.counted, False
            progress, session.progress = session.progress, None
            slot, session.slot = session.slot, None
            self._tallied.pop(id(session), None)
        if slot is not None:
            self._slots.remove(self._column, slot)
        if progress is not None and self.live is not None:
            self.live.closed(progress)
        if tally is not None and self.audit is not None:
            tally.flush(self.audit, session.calling_ae, session.called_ae, session.address)
        if counted:
            self.access.closed(session.calling_ae)
            metrics.ACTIVE_ASSOCIATIONS.labels(metrics.CALLING_AE(session.calling_ae)).dec()

    def flush_due_tallies(self, now: float) -> None:
        """Audit what open associations received since their last flush, once it is due
        (monotonic `now`): a killed acceptor loses at most one interval of records."""
        if self.audit is None:
            return
        with self._lock:
            due = [(s, s.tally) for s in self._tallied.values()
                   if s.tally is not None and s.tally.due(now)]
        for session, tally in due:
            tally.flush(self.audit, session.calling_ae, session.called_ae, session.address)
