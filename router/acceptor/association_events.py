"""The acceptor's association-level handlers: who is let in, and the counts of who is in.

Per-association state lives on the association object (handlers may run on other threads).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pynetdicom import evt

from router.acceptor.access import AccessPolicy, Rejection, peer_certificate
from router.acceptor.admission import Admission
from router.acceptor.store_handler import StoreHandler
from router.audit.trail import AuditTrail, TransferTally
from router.core import metrics
from router.core.dimse_status import (
    LOCAL_LIMIT_EXCEEDED,
    NO_REASON_GIVEN,
    TEMPORARY_CONGESTION,
    Status,
)
from router.core.log_safety import AUDIT_REPEAT_BUDGET, RepeatLimiter
from router.core.shared_counts import SharedCounts
from router.core.status_snapshots import LiveAssociations
from router.core.tls import subject_text
from router.dicom.net import set_nodelay
from router.dicom.relay_association import router_association

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

    def on_requested(self, event: Any) -> None:
        """Reject a malformed request, then by access rule (permanent reasons), then by
        load (transient)."""
        assoc = event.assoc
        rejection = _malformed(assoc) or self.access.check(assoc) or self._take_slot(assoc)
        if rejection is None:
            refusal = self.admission.refusal()
            if refusal is None:
                return
            metrics.REFUSALS.labels(refusal[0]).inc()
            # rejected-transient, service-provider (presentation), temporary congestion
            rejection = Rejection(TEMPORARY_CONGESTION, refusal[0], refusal[1])
        self._reject(assoc, rejection)

    def _take_slot(self, assoc: Any) -> Rejection | None:
        limit = self.access.config.max_associations
        if self._slots.try_add(self._column, None, None, limit) is not None:
            return Rejection(LOCAL_LIMIT_EXCEEDED, "max_associations",
                             f"already {limit} associations (listen.max_associations)")
        with self._lock:
            router_association(assoc).router_slot = True
        return None

    def _reject(self, assoc: Any, rejection: Rejection) -> None:
        calling = metrics.CALLING_AE(assoc.requestor.primitive.calling_ae_title)
        metrics.ASSOCIATIONS.labels(calling, "rejected").inc()
        metrics.ASSOCIATION_REJECTIONS.labels(rejection.label).inc()
        key = (assoc.requestor.address, rejection.label)
        if self.audit is not None and self._audit_limiter.allow(key, AUDIT_REPEAT_BUDGET):
            rq = assoc.requestor.primitive
            dropped = self._audit_limiter.suppressed(key)
            note = f" ({dropped} earlier ones were not audited)" if dropped else ""
            # Load refusals are no security event; access-rule refusals are.
            self.audit.association_rejected(
                rq.calling_ae_title, rq.called_ae_title, assoc.requestor.address,
                rejection.message + note, security=rejection.result == 1)
        log.warning("rejecting association from %s (%s): %s",
                    assoc.requestor.primitive.calling_ae_title, assoc.requestor.address,
                    rejection.message)
        assoc.acse.send_reject(*rejection.reject)
        assoc.kill()  # as pynetdicom's own rejections do: lets the DUL send the RJ first

    def on_user_id(self, event: Any) -> tuple[bool, bytes | None]:
        if not self.access.users:
            return True, None  # no users configured: identities are not checked (as unbound)
        verified = self.access.verify_user(event.user_id_type, event.primary_field,
                                           event.secondary_field)
        if not verified:
            metrics.ASSOCIATION_REJECTIONS.labels("user_identity").inc()
            log.warning("user identity refused for %s (%s)", event.assoc.requestor.ae_title,
                        event.assoc.requestor.address)
        return verified, None

    def on_accepted(self, event: Any) -> None:
        assoc = router_association(event.assoc)
        called = assoc.requestor.primitive.called_ae_title if assoc.requestor.primitive else ""
        if self.audit is not None:
            assoc.router_tally = TransferTally()
            self.audit.association_accepted(
                assoc.requestor.ae_title, called,
                assoc.requestor.address, subject_text(peer_certificate(assoc)))
        if self.live is not None:
            assoc.router_progress = self.live.opened(
                assoc.requestor.ae_title, called,
                f"{assoc.requestor.address}:{assoc.requestor.port}", self.tls)
        assoc.router_counted = True
        self.access.opened(assoc.requestor.ae_title)
        calling = metrics.CALLING_AE(assoc.requestor.ae_title)
        metrics.ASSOCIATIONS.labels(calling, "accepted").inc()
        metrics.ACTIVE_ASSOCIATIONS.labels(calling).inc()

    def on_rejected(self, event: Any) -> None:
        """pynetdicom's own rejections (unknown called AE, association limit)."""
        calling = metrics.CALLING_AE(event.assoc.requestor.primitive.calling_ae_title)
        metrics.ASSOCIATIONS.labels(calling, "rejected").inc()
        if self.audit is not None:
            rq = event.assoc.requestor.primitive
            self.audit.association_rejected(rq.calling_ae_title, rq.called_ae_title,
                                            event.assoc.requestor.address, "rejected")

    def on_closed(self, event: Any) -> None:
        self.finished(event.assoc)

    def finished(self, assoc: Any) -> None:
        """Settle an association's counts and audit once, however it ended.

        EVT_CONN_CLOSE does not fire when pynetdicom aborts on an exception while decoding
        a PDU, so the connection's thread calls this too when the association is over.
        """
        state = router_association(assoc)
        with self._lock:
            tally, state.router_tally = state.router_tally, None
            counted, state.router_counted = state.router_counted, False
            progress, state.router_progress = state.router_progress, None
            slot, state.router_slot = state.router_slot, False
        if slot:
            self._slots.remove(self._column, None)
        if progress is not None and self.live is not None:
            self.live.closed(progress)
        if tally is not None and self.audit is not None:
            tally.flush(self.audit, assoc.requestor.ae_title,
                        assoc.requestor.primitive.called_ae_title, assoc.requestor.address)
        if counted:
            self.access.closed(assoc.requestor.ae_title)
            metrics.ACTIVE_ASSOCIATIONS.labels(metrics.CALLING_AE(assoc.requestor.ae_title)).dec()

    def handlers(self, store: StoreHandler) -> list[Any]:
        bound = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, _on_echo),
            (evt.EVT_C_STORE, store),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_CONN_CLOSE, self.on_closed),
        ]
        # Bound even without users: a reload may add some, and they must then be checked.
        bound.append((evt.EVT_USER_ID, self.on_user_id))
        return bound


def _malformed(assoc: Any) -> Rejection | None:
    """PS3.8 9.3.2: a request proposes one or more presentation contexts."""
    if not assoc.requestor.primitive.presentation_context_definition_list:
        return Rejection(NO_REASON_GIVEN, "no_presentation_context",
                         "the request proposes no presentation context")
    return None


def _on_echo(event: Any) -> int:
    metrics.DIMSE_REQUESTS.labels("C-ECHO", f"0x{Status.SUCCESS:04X}").inc()
    return Status.SUCCESS
