"""DICOM destination: C-STORE the spooled file as is, over a pooled association.

The association (router/dicom/store_client.py, on the router's own engine) proposes one
context per (SOP class, exact transfer syntax) it has seen, so a file is never converted:
either the peer accepts its syntax or the delivery fails with `no_context`, which is
permanent. Associations are shared by the worker's threads through
router/dicom/association_pool.py; a new one that the destination refuses or leaves
unanswered while the router holds another is `busy` (router/broker/concurrency.py), not a
failure.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from pathlib import Path

from router.core import metrics
from router.core.client_tls import CLIENT_CONTEXTS
from router.core.config import DicomDestination as DicomConfig
from router.core.dimse_status import is_delivered, is_transient_failure
from router.core.errors import DeliveryError, TLSConfigError
from router.core.messages import JobHeader
from router.core.peer_address import host_port
from router.core.priority import TO_DIMSE
from router.core.tls import PEER_REFUSED, failure_reason, failure_text, tls_failure_message
from router.dicom.association_pool import AssociationPool, release_all
from router.dicom.dataset_file import DatasetFileError, read_dataset_file
from router.dicom.scu_socket import Peer
from router.dicom.store_client import StoreAssociation
from router.dicom.store_failures import AssociationFailed, StoreFailed

log = logging.getLogger(__name__)

# A worker's pool of C-STORE associations, shared by its delivery threads.
StorePool = AssociationPool[StoreAssociation]

# A-ASSOCIATE-RJ source 3 (service-provider, presentation): reason 1 temporary congestion,
# 2 local limit exceeded. Result 2 is "rejected (transient)" whatever the reason.
BUSY_REJECT_REASONS = frozenset({1, 2})
RECENTLY_RELEASED_SECONDS = 2.0


def is_busy_answer(failure: AssociationFailed, wait: float) -> bool:
    """A refusal that means "not now, I am serving another association": a transient or
    limit-exceeded rejection, or no answer at all within the wait."""
    if not failure.connected:
        return False  # cannot connect: down, not busy
    rj = failure.rejection
    if rj is not None:
        return rj.result == 2 or (rj.source == 3 and rj.reason in BUSY_REJECT_REASONS)
    return failure.kind == "no_answer" and failure.waited >= wait * 0.9


# failure_reason()s that say a certificate was not accepted, whichever side refused it.
CERTIFICATE_FAILURES = frozenset({
    "certificate_expired", "certificate_revoked", "crl_problem", "hostname_mismatch",
    "unknown_ca", "bad_certificate", "no_client_certificate", PEER_REFUSED})


def certificate_failure(exc: BaseException) -> str:
    """A few words on a certificate that was not accepted, "" for another TLS failure."""
    reason = failure_reason(exc)
    if reason not in CERTIFICATE_FAILURES:
        return ""
    if reason == PEER_REFUSED:
        return failure_text(exc).removeprefix("the peer ")  # "refused the router's ..."
    if reason == "no_client_certificate":
        return "wants a client certificate (tls.cert)"
    return f"certificate not accepted: {reason}"


class SopClassRefused(DeliveryError):
    """`no_context` because the destination does not take the SOP class at all (result 3,
    abstract syntax not supported): offering it in another syntax is no use."""

    def __init__(self, destination: str, sop_class: str) -> None:
        super().__init__("no_context", f"{destination} does not support SOP class "
                         f"{sop_class} (abstract syntax not supported)", transient=False)


def classify(failure: AssociationFailed, destination: str, sop_class: str,
             syntax: str) -> DeliveryError:
    """The DeliveryError kind the broker acts on (README "Delivery and retries")."""
    if failure.kind == "tls" and failure.tls_error is not None:
        return DeliveryError("tls", tls_failure_message(destination, failure.tls_error),
                             transient=True, certificate=certificate_failure(failure.tls_error))
    if not failure.connected:
        return DeliveryError("connection", f"cannot connect to {destination} ({failure})",
                             transient=True)
    if failure.kind == "no_context" and sop_class in failure.unsupported:
        return SopClassRefused(destination, sop_class)
    if failure.kind == "no_context":
        return DeliveryError(
            "no_context",
            f"{destination} accepts none of the proposed contexts (SOP class {sop_class} in "
            f"transfer syntax {syntax})", transient=False)
    if failure.rejection is not None:
        rj = failure.rejection
        # result 2 = rejected-transient (e.g. congestion); 1 = permanent (e.g. unknown AE title)
        return DeliveryError("rejected", f"{destination} rejected the association: "
                             f"{rj.describe()}", transient=rj.result == 2)
    if failure.kind == "aborted":
        return DeliveryError("aborted", f"{destination} aborted the association", transient=True)
    if failure.kind == "no_answer":
        return DeliveryError("aborted", f"{destination} {failure}", transient=True)
    # Its words: a reset or an unexpected EOF, and over TLS 1.3 what that most likely means.
    return DeliveryError("aborted", f"{destination} {failure}", transient=True)


def store_failure(failure: StoreFailed, destination: str) -> DeliveryError:
    """What a C-STORE left without a response becomes (README "Retries"). An abort, close
    or reset under it, or an answer that breaks the protocol, says the destination is in
    trouble (it backs off) and may be this instance's fault (router/broker/dispatch.py
    decides which); silence is a DIMSE timeout, retried; a maximum PDU length too small to
    carry anything is the destination's, whatever the instance."""
    if failure.kind == "timeout":
        return DeliveryError("dimse_timeout", f"{destination} sent no C-STORE response "
                             f"({failure})", transient=True)
    if failure.kind == "max_pdu":
        return DeliveryError("max_pdu", f"{destination} cannot be sent anything: {failure}",
                             transient=True)
    if failure.kind == "protocol":
        return DeliveryError("protocol", f"{destination} broke the protocol under a C-STORE: "
                             f"{failure}", transient=True, during_store=True)
    return DeliveryError("aborted", f"{destination} sent no C-STORE response ({failure})",
                         transient=True, during_store=True)


def _settled(assoc: StoreAssociation, sop_class: str, syntax: str) -> bool:
    """The association answered for this (SOP class, syntax): accepted or refused it."""
    return assoc.accepts(sop_class, syntax) or assoc.refused(sop_class, syntax)


# What the network says when a route or host goes away under an established association;
# any other OSError that escapes a C-STORE comes from reading the spooled file.
NETWORK_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN,
                            errno.EHOSTDOWN, errno.ETIMEDOUT})


def unsent(exc: OSError, destination: str, source: Path) -> DeliveryError:
    """An OSError under a C-STORE that the association did not turn into StoreFailed: the
    network (the destination backs off) or the spool's file (this job is retried, then a
    dead letter: a bad sector under one instance must not hold the destination's queue)."""
    if exc.errno in NETWORK_ERRNOS:
        return DeliveryError("connection", f"sending to {destination} failed: {exc}",
                             transient=True)
    return DeliveryError("spool_read", f"reading {source.name} from the spool failed: "
                         f"{exc.strerror or exc}", transient=True)


class DicomDestination:
    """One per delivery thread; the associations come from the worker's shared pool."""

    def __init__(self, name: str, config: DicomConfig, router_ae: str,
                 pool: StorePool | None = None, tls_key: str = "",
                 retry_unusable_tls: bool = True) -> None:
        self.name = name
        self.config = config
        self.pool: StorePool = pool or StorePool()
        self.tls_key = tls_key or f"destinations.{name}.tls"  # known_aes.X.tls for a move
        # A queued job waits for fixed files and a SIGHUP; a relayed C-MOVE's sub-operation
        # cannot wait that long: it fails at once.
        self.retry_unusable_tls = retry_unusable_tls
        self.peer = Peer(
            host=config.host, port=config.port, called_ae=config.ae_title,
            calling_ae=config.calling_ae or router_ae, max_pdu=config.max_pdu,
            connect_timeout=config.connect_timeout, dimse_timeout=config.dimse_timeout,
            server_name=config.tls.server_name or config.host)
        self.assoc: StoreAssociation | None = None  # taken from the pool for the current task
        self.holding = False  # this thread counts as a user in the pool
        self.others_open = 0  # from the broker: associations open elsewhere in the router
        self.released_at = -RECENTLY_RELEASED_SECONDS  # when this thread last released one

    def prepare(self, pairs: list[tuple[str, str]]) -> None:
        """Propose every (SOP class, syntax) of a batch at once, so that it needs one
        association (up to 128 pairs)."""
        self.pool.contexts(self.name, pairs)
        if self.assoc is not None and not all(_settled(self.assoc, *p) for p in pairs):
            self.release()

    def _association(self, sop_class: str, syntax: str) -> StoreAssociation:
        if self.assoc is not None and self.assoc.is_established:
            if self.assoc.accepts(sop_class, syntax):
                return self.assoc
            if self.assoc.refused(sop_class, syntax):
                # Asked on this association already: a new one would be refused it again
                # (an Implicit-only PACS took a new association per instance, and a second
                # one it could not serve yet answered busy). The syntax fallback uses this one.
                raise self._no_context(sop_class, syntax)
            self.release()  # re-negotiate with this syntax added to what we have seen
        if not self.holding:
            taken, unfit = self.pool.take(self.name,
                                          lambda a: _settled(a, sop_class, syntax))
            self.holding = True
            if unfit:
                release_all(unfit)  # idle ones without this context: make room for a new one
                self.released_at = time.monotonic()
            if taken is not None:
                self.assoc = taken
                if taken.refused(sop_class, syntax):
                    raise self._no_context(sop_class, syntax)
                return taken
        self.assoc = self._open(sop_class, syntax)
        if not self.assoc.accepts(sop_class, syntax):
            raise self._no_context(sop_class, syntax)
        return self.assoc

    def _no_context(self, sop_class: str, syntax: str) -> DeliveryError:
        if self.assoc is not None and sop_class in self.assoc.unsupported:
            return SopClassRefused(self.name, sop_class)
        return DeliveryError(
            "no_context",
            f"{self.name} does not accept SOP class {sop_class} in transfer syntax {syntax}",
            transient=False,
        )

    def _open(self, sop_class: str, syntax: str) -> StoreAssociation:
        wanted = self.pool.contexts(self.name, [(sop_class, syntax)])
        # Another association of ours is open to it: a short wait tells busy from down. One
        # just released counts too: the peer may not have freed its slot yet.
        others = max(self.others_open, self.pool.open_count(self.name) - 1)
        if time.monotonic() - self.released_at < RECENTLY_RELEASED_SECONDS:
            others = max(others, 1)
        wait = self.config.busy_timeout if others > 0 else self.config.acse_timeout
        peer = self._peer()
        try:
            return StoreAssociation.open(peer, wanted, wait)
        except AssociationFailed as failed:
            if others > 0 and is_busy_answer(failed, wait):
                raise DeliveryError("busy", f"{self.name} is busy: it refused or did not "
                                    f"answer one more association while {others} are open",
                                    transient=True) from None
            failure = classify(failed, self.name, sop_class, syntax)
            failure.args = (f"{failure} ({host_port(self.config.host, self.config.port)})",)
            raise failure from None

    def _peer(self) -> Peer:
        """The peer with the process's client context (router/core/client_tls.py): the last
        one that loaded, so a renewal with broken files leaves deliveries on the old one."""
        if self.config.tls.mode == "off":
            return self.peer
        try:
            tls = CLIENT_CONTEXTS.get(self.config.tls, self.tls_key)
        except TLSConfigError:
            raise DeliveryError("tls", f"TLS with {self.name} failed: its client certificate "
                                f"or key ({self.tls_key}) cannot be used (see the log)",
                                transient=self.retry_unusable_tls) from None
        return dataclasses.replace(self.peer, tls=tls)

    def deliver(self, job: JobHeader, source: Path) -> None:
        self.send(job, source)

    def send(self, job: JobHeader, source: Path,
             originator: tuple[str, int] | None = None) -> int:
        """Send the file; the destination's status when it kept it (success or a warning),
        DeliveryError otherwise. `originator`: a C-MOVE sub-operation's Move Originator AE
        Title and Message ID."""
        with source.open("rb") as fh:
            try:
                meta = read_dataset_file(fh, source.stat().st_size)
            except DatasetFileError as exc:
                raise DeliveryError("unreadable", f"{source.name}: {exc}",
                                    transient=False) from exc
            # The file meta says what the bytes are; the job header when it has none.
            sop_class = meta.sop_class_uid or job.sop_class_uid
            sop_instance = meta.sop_instance_uid or job.sop_instance_uid
            syntax = meta.transfer_syntax_uid or job.transfer_syntax_uid
            assoc = self._association(sop_class, syntax)
            try:
                response = assoc.store(fh, meta.dataset_length, sop_class, sop_instance, syntax,
                                       TO_DIMSE.get(job.priority_for(self.name), 0),
                                       originator)
            except StoreFailed as exc:
                self.assoc = None  # the association is done
                raise store_failure(exc, self.name) from exc
            except OSError as exc:
                self.assoc = None
                raise unsent(exc, self.name, source) from exc
        status = response.status
        metrics.labelled(metrics.DIMSE_RESPONSES, self.name, "C-STORE", f"0x{status:04X}").inc()
        if not is_delivered(status):
            raise DeliveryError(
                "status", f"{self.name} answered 0x{status:04X} {response.error_comment}".strip(),
                transient=is_transient_failure(status),
            )
        return status

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
