"""DICOM destination: C-STORE the spooled file as is, over a pooled association.

The association proposes one context per (SOP class, exact transfer syntax) it has seen, so a
file is never converted: either the peer accepts its syntax or the delivery fails with
`no_context`, which is permanent. Associations are shared by the worker's threads through
router/dicom/association_pool.py; a new one that the destination refuses or leaves unanswered
while the router holds another is `busy` (router/broker/concurrency.py), not a failure.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
import weakref
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from router.core import metrics
from router.core.config import DicomDestination as DicomConfig
from router.core.dimse_status import is_delivered, is_transient_failure
from router.core.errors import DeliveryError
from router.core.messages import JobHeader
from router.core.priority import TO_DIMSE
from router.core.tls import client_context, failure_reason
from router.dicom.association_pool import AssociationPool, release_all
from router.dicom.net import set_nodelay

log = logging.getLogger(__name__)


# Outbound associations whose TCP connection was made: tells a refused connection from a
# later rejection or abort (pynetdicom says neither). Weak: gone with the association.
_connected: weakref.WeakSet[Association] = weakref.WeakSet()


def mark_connected(event: Any) -> None:
    """EVT_CONN_OPEN handler of an outbound association."""
    _connected.add(event.assoc)


def was_connected(assoc: Association) -> bool:
    return assoc in _connected


def _on_connected(event: Any) -> None:
    set_nodelay(event)
    mark_connected(event)


# A-ASSOCIATE-RJ source 3 (service-provider, presentation): reason 1 temporary congestion,
# 2 local limit exceeded. Result 2 is "rejected (transient)" whatever the reason.
BUSY_REJECT_REASONS = frozenset({1, 2})
RECENTLY_RELEASED_SECONDS = 2.0


def is_busy_answer(assoc: Association, waited: float, wait: float) -> bool:
    """A refusal that means "not now, I am serving another association": a transient or
    limit-exceeded rejection, or no answer at all within the wait."""
    if not was_connected(assoc):
        return False  # cannot connect: down, not busy
    primitive = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_rejected and primitive is not None:
        result = getattr(primitive, "result", None)
        source = getattr(primitive, "result_source", None)
        reason = getattr(primitive, "diagnostic", None)
        return result == 2 or (source == 3 and reason in BUSY_REJECT_REASONS)
    # pynetdicom aborts when the ACSE timeout passes without an answer.
    return assoc.is_aborted and primitive is None and waited >= wait * 0.9


def failure_from_association(
    assoc: Association, destination: str, sop_class: str, syntax: str
) -> DeliveryError:
    if not was_connected(assoc):
        return DeliveryError("connection", f"cannot connect to {destination}", transient=True)
    answer = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_aborted and answer is not None and getattr(answer, "result", None) == 0:
        # Accepted, but not one proposed context: pynetdicom aborts such an association.
        return DeliveryError(
            "no_context",
            f"{destination} accepts none of the proposed contexts (SOP class {sop_class} in "
            f"transfer syntax {syntax})", transient=False)
    if assoc.is_rejected:
        result = getattr(assoc.acceptor.primitive, "result", None)
        reason_code = getattr(assoc.acceptor.primitive, "diagnostic", None)
        # result 2 = rejected-transient (e.g. congestion); 1 = permanent (e.g. unknown AE title)
        return DeliveryError("rejected", f"{destination} rejected the association "
                             f"(result {result}, reason {reason_code})", transient=result == 2)
    if assoc.is_aborted:
        return DeliveryError("aborted", f"{destination} aborted the association", transient=True)
    return DeliveryError("aborted", f"{destination} closed the connection during negotiation",
                         transient=True)


class DicomDestination:
    """One per delivery thread; the associations come from the worker's shared pool."""

    def __init__(self, name: str, config: DicomConfig, router_ae: str,
                 pool: AssociationPool | None = None) -> None:
        self.name = name
        self.config = config
        self.pool = pool or AssociationPool()
        self.ae = AE(ae_title=config.calling_ae or router_ae)
        self.ae.maximum_pdu_size = config.max_pdu
        self.ae.connection_timeout = config.connect_timeout
        self.ae.acse_timeout = config.acse_timeout
        self.ae.dimse_timeout = config.dimse_timeout
        self.ae.network_timeout = config.dimse_timeout
        self.tls_context = (client_context(config.tls, f"destinations.{name}.tls")
                            if config.tls.mode != "off" else None)
        self.assoc: Association | None = None  # taken from the pool for the current task
        self.holding = False  # this thread counts as a user in the pool
        self.others_open = 0  # from the broker: associations open elsewhere in the router
        self.released_at = -RECENTLY_RELEASED_SECONDS  # when this thread last released one

    def _accepts(self, assoc: Association, sop_class: str, syntax: str) -> bool:
        return any(cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
                   for cx in assoc.accepted_contexts)

    def prepare(self, pairs: list[tuple[str, str]]) -> None:
        """Propose every (SOP class, syntax) of a batch at once, so that it needs one
        association (up to 128 pairs)."""
        self.pool.contexts(self.name, pairs)
        if self.assoc is not None and not all(self._accepts(self.assoc, *p) for p in pairs):
            self.release()

    def _association(self, sop_class: str, syntax: str) -> Association:
        if self.assoc is not None and self.assoc.is_established:
            if self._accepts(self.assoc, sop_class, syntax):
                return self.assoc
            self.release()  # re-negotiate with this syntax added to what we have seen
        if not self.holding:
            taken, unfit = self.pool.take(self.name, lambda a: self._accepts(a, sop_class, syntax))
            self.holding = True
            if unfit:
                release_all(unfit)  # idle ones without this context: make room for a new one
                self.released_at = time.monotonic()
            if taken is not None:
                self.assoc = taken
                return taken
        self.assoc = self._open(sop_class, syntax)
        if not self._accepts(self.assoc, sop_class, syntax):
            raise DeliveryError(
                "no_context",
                f"{self.name} does not accept SOP class {sop_class} in transfer syntax {syntax}",
                transient=False,
            )
        return self.assoc

    def _open(self, sop_class: str, syntax: str) -> Association:
        wanted = self.pool.contexts(self.name, [(sop_class, syntax)])
        contexts = [build_context(sop, ts) for sop, ts in wanted]
        tls_args = None
        if self.tls_context is not None:
            tls_args = (self.tls_context, self.config.tls.server_name or self.config.host)
        # Another association of ours is open to it: a short wait tells busy from down. One
        # just released counts too: the peer may not have freed its slot yet.
        others = max(self.others_open, self.pool.open_count(self.name) - 1)
        if time.monotonic() - self.released_at < RECENTLY_RELEASED_SECONDS:
            others = max(others, 1)
        wait = self.config.busy_timeout if others > 0 else self.config.acse_timeout
        self.ae.acse_timeout = wait
        started = time.monotonic()
        assoc = self.ae.associate(
            self.config.host, self.config.port, contexts=contexts, tls_args=tls_args,
            ae_title=self.config.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, _on_connected)],
        )
        if assoc.is_established:
            return assoc
        if others > 0 and is_busy_answer(assoc, time.monotonic() - started, wait):
            raise DeliveryError("busy", f"{self.name} is busy: it refused or did not answer "
                                f"one more association while {others} are open", transient=True)
        failure = failure_from_association(assoc, self.name, sop_class, syntax)
        if failure.reason == "connection" and tls_args is not None:
            failure = self._tls_diagnosis() or failure
        failure.args = (f"{failure} ({self.config.host}:{self.config.port})",)
        raise failure

    def _tls_diagnosis(self) -> DeliveryError | None:
        """pynetdicom hides why a TLS connection failed; a short probe tells TLS apart."""
        assert self.tls_context is not None
        address = (self.config.host, self.config.port)
        name = self.config.tls.server_name or self.config.host
        try:
            raw = socket.create_connection(address, timeout=self.config.connect_timeout)
            with raw, self.tls_context.wrap_socket(raw, server_hostname=name):
                return None  # TLS works now: the failure was something else
        except ssl.SSLError as exc:
            return DeliveryError("tls", f"TLS with {self.name} failed: {failure_reason(exc)} "
                                 f"({exc.reason})", transient=True)
        except OSError:
            return None

    def deliver(self, job: JobHeader, source: Path) -> None:
        assoc = self._association(job.sop_class_uid, job.transfer_syntax_uid)
        try:
            response: Any = assoc.send_c_store(source, priority=TO_DIMSE.get(job.priority, 0))
        except (OSError, RuntimeError) as exc:
            self.abort()
            raise DeliveryError("connection", f"sending to {self.name} failed: {exc}",
                                transient=True) from exc
        status = getattr(response, "Status", None)
        if status is None:
            # No response within dimse_timeout, or the peer aborted: the association is done.
            self.abort()
            raise DeliveryError("dimse_timeout", f"{self.name} sent no C-STORE response",
                                transient=True)
        metrics.DIMSE_RESPONSES.labels(self.name, "C-STORE", f"0x{int(status):04X}").inc()
        if not is_delivered(int(status)):
            comment = getattr(response, "ErrorComment", "")
            raise DeliveryError(
                "status", f"{self.name} answered 0x{int(status):04X} {comment}".strip(),
                transient=is_transient_failure(int(status)),
            )

    def park(self) -> None:
        """The task is done: the association goes back to the pool for the next delivery."""
        if self.holding:
            self.pool.give_back(self.name, self.assoc, self.config.idle_timeout)
        self.assoc, self.holding = None, False

    def release(self) -> None:
        if self.assoc is not None:
            if self.assoc.is_established:
                self.assoc.release()
                self.released_at = time.monotonic()
            self.assoc = None

    def abort(self) -> None:
        if self.assoc is not None:
            self.assoc.abort()
            self.assoc = None

    def close(self) -> None:
        self.release()
        self.park()
