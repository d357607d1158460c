"""DICOM destination: C-STORE the spooled file as is, over an association kept open and reused.

The association proposes one context per (SOP class, exact transfer syntax) it has seen, so a
file is never converted: either the peer accepts its syntax or the delivery fails with
`no_context`, which is permanent.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from router import metrics
from router.config import DicomDestination as DicomConfig
from router.delivery_queue import TO_DIMSE
from router.dicom_net import set_nodelay
from router.errors import DeliveryError
from router.messages import JobHeader
from router.status import is_delivered, is_transient_failure
from router.tls import client_context, failure_reason

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


def _on_connected(event: Any) -> None:
    set_nodelay(event)
    event.assoc.router_connected = True  # tells a refused connection from a later abort


def failure_from_association(
    assoc: Association, destination: str, sop_class: str, syntax: str
) -> DeliveryError:
    if not getattr(assoc, "router_connected", False):
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
    """One per delivery thread: an association is never shared between threads."""

    def __init__(self, name: str, config: DicomConfig, router_ae: str) -> None:
        self.name = name
        self.config = config
        self.ae = AE(ae_title=config.calling_ae or router_ae)
        self.ae.maximum_pdu_size = config.max_pdu
        self.ae.connection_timeout = config.connect_timeout
        self.ae.acse_timeout = config.acse_timeout
        self.ae.dimse_timeout = config.dimse_timeout
        self.ae.network_timeout = config.dimse_timeout
        self.tls_context = (client_context(config.tls, f"destinations.{name}.tls")
                            if config.tls.mode != "off" else None)
        self.contexts: dict[tuple[str, str], None] = {}  # ordered set of (SOP class, syntax)
        self.assoc: Association | None = None
        self.last_used = 0.0

    def _accepts(self, assoc: Association, sop_class: str, syntax: str) -> bool:
        return any(cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
                   for cx in assoc.accepted_contexts)

    def prepare(self, pairs: list[tuple[str, str]]) -> None:
        """Propose every (SOP class, syntax) of a batch at once, so that it needs one
        association (up to 128 pairs)."""
        for pair in pairs:
            self.contexts[pair] = None
        if self.assoc is not None and not all(self._accepts(self.assoc, *p) for p in pairs):
            self.release()

    def _association(self, sop_class: str, syntax: str) -> Association:
        if self.assoc is not None and self.assoc.is_established:
            if self._accepts(self.assoc, sop_class, syntax):
                return self.assoc
            self.release()  # re-negotiate with this syntax added to what we have seen
        self.contexts[(sop_class, syntax)] = None
        wanted = list(self.contexts)[-MAX_CONTEXTS:]
        contexts = [build_context(sop, ts) for sop, ts in wanted]
        tls_args = None
        if self.tls_context is not None:
            tls_args = (self.tls_context, self.config.tls.server_name or self.config.host)
        assoc = self.ae.associate(
            self.config.host, self.config.port, contexts=contexts, tls_args=tls_args,
            ae_title=self.config.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, _on_connected)],
        )
        if not assoc.is_established:
            failure = failure_from_association(assoc, self.name, sop_class, syntax)
            if failure.reason == "connection" and tls_args is not None:
                failure = self._tls_diagnosis() or failure
            failure.args = (f"{failure} ({self.config.host}:{self.config.port})",)
            raise failure
        self.assoc = assoc
        if not self._accepts(assoc, sop_class, syntax):
            raise DeliveryError(
                "no_context",
                f"{self.name} does not accept SOP class {sop_class} in transfer syntax {syntax}",
                transient=False,
            )
        return assoc

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
        self.last_used = time.monotonic()
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

    def release_if_idle(self, now: float) -> None:
        if self.assoc is not None and now - self.last_used > self.config.idle_timeout:
            self.release()

    def release(self) -> None:
        if self.assoc is not None:
            if self.assoc.is_established:
                self.assoc.release()
            self.assoc = None

    def abort(self) -> None:
        if self.assoc is not None:
            self.assoc.abort()
            self.assoc = None

    def close(self) -> None:
        self.release()
