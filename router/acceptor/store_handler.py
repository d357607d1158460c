"""C-STORE as the acceptor handles it: validate, route, take ownership, hand over, answer.

Errors become DIMSE statuses here and only here; nothing escapes into the connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import threading
import time
from pathlib import Path
from typing import NoReturn

from router.acceptor.admission import Admission
from router.acceptor.broker_client import BrokerClient
from router.acceptor.session import AssociationSession, ReceivedStore
from router.acceptor.store_decision import (
    COMPLETION_KEYWORDS,
    IDENTITY_KEYWORDS,
    Dropped,
    StoreCommand,
    check_identity,
    decide,
    identity_of,
)
from router.audit.trail import AuditTrail
from router.core import metrics
from router.core.dimse_status import Status
from router.core.disk_space import full_spool_comment
from router.core.errors import (
    CompletionShareFull,
    DatasetMismatch,
    DimseRefusal,
    OutOfResources,
    PatternTooSlow,
    QueueFull,
)
from router.core.log_context import JOB, working_on
from router.core.messages import JobHeader
from router.core.rules import RuleSet
from router.core.spool import PendingCommit, Spool, new_job_id
from router.core.tls import subject_text
from router.core.uids import require_uid
from router.dicom.dataset_identity import sop_uids
from router.dicom.first_use import dicom_libraries
from router.relay.server import RelayServer

log = logging.getLogger(__name__)

_RESULT_LABELS = {
    Status.SUCCESS: "accepted",
    Status.NO_ROUTE: "no_route",
    Status.INVALID_UID: "invalid_uid",
    Status.OUT_OF_RESOURCES: "out_of_resources",
    Status.DATASET_TOO_LARGE: "too_large",
    Status.REJECTED_BY_RULE: "rejected",
    Status.PATTERN_TOO_SLOW: "pattern_timeout",
}
# Success labels whose file the handler moved away (committed, or a relayed C-MOVE's).
_TAKEN = frozenset({"accepted", "relayed"})


class StoreHandler:
    def __init__(
        self,
        spool: Spool,
        rules: RuleSet,
        broker: BrokerClient,
        admission: Admission,
        max_dataset_bytes: int | None = None,
        audit: AuditTrail | None = None,
        relay: RelayServer | None = None,
    ) -> None:
        self.relay = relay
        self.spool = spool
        self.broker = broker
        self.admission = admission
        self.audit = audit
        self._syncs_counted = 0
        self._syncs_lock = threading.Lock()
        self.set_rules(rules, max_dataset_bytes)

    def set_rules(self, rules: RuleSet, max_dataset_bytes: int | None) -> None:
        """At start and on a config reload; a C-STORE in progress keeps the rules it read."""
        # One header read serves the identity check, the rules and the audit trail.
        audit_keywords = ("StudyInstanceUID", "PatientID") if self.audit is not None else ()
        completion = COMPLETION_KEYWORDS if rules.completes else ()
        self.keywords = tuple(sorted({*IDENTITY_KEYWORDS, *rules.tag_keywords,
                                      *audit_keywords, *completion}))
        self.rules = rules
        self.max_dataset_bytes = max_dataset_bytes

    def handle(self, received: ReceivedStore) -> tuple[int, str, bool]:
        """The C-STORE-RSP's status and error comment, and whether the received file was
        taken (into the spool, or a relayed C-MOVE's); if not, the caller removes it."""
        progress = received.session.progress
        with working_on(association=progress.key if progress is not None else None):
            status, comment, label = self._answer(received)
        if progress is not None and status == Status.SUCCESS:
            progress.stored += 1  # before the answer is sent: the live count is exact
        return status, comment, label in _TAKEN

    def _answer(self, received: ReceivedStore) -> tuple[int, str, str]:
        tags: dict[str, str] = {}
        label = ""
        try:
            status, label = self._store(received, tags)
            comment = ""
        except DimseRefusal as exc:
            status, comment = exc.status, str(exc)
            label = "rejected" if isinstance(exc, DatasetMismatch) else ""
            if isinstance(exc, PatternTooSlow):
                metrics.PATTERN_TIMEOUTS.labels(exc.rule).inc()
            log.warning("C-STORE refused with 0x%04X: %s", status, exc)  # rate-limited
        except Exception:  # the handler boundary: an unexpected error is a failure status
            log.exception("C-STORE failed unexpectedly")
            status, comment = Status.PROCESSING_FAILURE, "router internal error; see its log"
        metrics.labelled(metrics.INSTANCES_RECEIVED,
                         label or _RESULT_LABELS.get(status, "error")).inc()
        metrics.labelled(metrics.DIMSE_REQUESTS, "C-STORE", f"0x{status:04X}").inc()
        tally = received.session.tally
        if self.audit is not None and tally is not None:
            tally.add(tags.get("StudyInstanceUID", "unknown"), received.sop_class_uid,
                      status == Status.SUCCESS, tags.get("PatientID"))
        return status, comment, label

    def _store(self, received: ReceivedStore, tags: dict[str, str]) -> tuple[Status, str]:
        sop_class = require_uid(received.sop_class_uid, "Affected SOP Class UID")
        sop_instance = require_uid(received.sop_instance_uid, "Affected SOP Instance UID")
        path = received.path
        # Its bytes were counted as they arrived (live_status).
        size = received.size if received.size is not None else path.stat().st_size
        self._check_received(received.session, size)
        session = received.session
        facts = session.facts

        def header() -> dict[str, str]:
            if not tags:
                tags.update(self._tags(path))
            return tags

        command = StoreCommand(sop_class, sop_instance, received.transfer_syntax_uid, size,
                               received.priority)
        # The first bytes tell (dataset_identity.py); pydicom only when they cannot.
        identity = sop_uids(received.head, received.transfer_syntax_uid)
        check_identity(command, identity if identity is not None else identity_of(header()))
        if self.audit is not None:
            header()  # per-study audit records, whatever the rules need
        if self.relay is not None and self.relay.take_move_instance(
                received.move_originator_message_id, received.move_originator_ae,
                received.session.facts.calling_ae, path):
            return Status.SUCCESS, "relayed"  # a relayed C-MOVE's instance, for its move
        refusal = self.admission.refusal(new_association=False, incoming=size)
        if refusal is not None:
            metrics.REFUSALS.labels(refusal[0]).inc()
            raise OutOfResources(f"{refusal[1]}; retry later")
        outcome = decide(self.rules.route(facts, header, sop_class), facts, command, header,
                         job_id=new_job_id(), received_at=time.time(),
                         peer_port=session.port,
                         tls_subject=subject_text(session.certificate))
        if isinstance(outcome, Dropped):
            metrics.INSTANCES_DROPPED.labels(outcome.rule).inc()
            log.info("C-STORE dropped by rule %s (answered Success, nothing kept)",
                     outcome.rule)
            return Status.SUCCESS, "dropped"
        job = outcome.job
        if self.audit is not None:  # for the forwarded-instance records (docs/audit.md)
            job = dataclasses.replace(job, study_uid=tags.get("StudyInstanceUID", ""),
                                      patient_id=tags.get("PatientID", ""))
        return self._keep(job, path, received.synced)

    def _check_received(self, session: AssociationSession, size: int) -> None:
        """What the receiver saw while the dataset arrived: the spool filling up, or the
        dataset past listen.max_dataset_bytes (it then stopped writing it)."""
        truncated, session.dataset_truncated = session.dataset_truncated, False
        if session.disk_full:
            session.disk_full = False
            raise OutOfResources(full_spool_comment(self.spool.root, receiving=True))
        if truncated or (self.max_dataset_bytes is not None and size > self.max_dataset_bytes):
            raise DimseRefusal(f"dataset exceeds the router's limit of "
                               f"{self.max_dataset_bytes} bytes", Status.DATASET_TOO_LARGE)

    def _keep(self, job: JobHeader, received: Path, synced: bool = False) -> tuple[Status, str]:
        """Commit the instance and its job to the spool and hand the job to the broker;
        Success only once both are done. The broker hears of the job while its record's
        group sync runs (the two waits overlap: at one sender the broker's round trip was
        a quarter of the acceptor's time per instance). Anything kept is discarded on the
        way out, unless the broker took it already."""
        size = job.size
        JOB.set(job.job_id)  # for structured logs; undone by working_on
        try:
            pending = self.spool.stage_commit(job, received, synced=synced)
        except OSError as exc:
            self._discard(job)
            self._refuse_failed_commit(exc)
        try:
            submitted = self.broker.send(job)
        except BaseException:
            self._settle_discarded(pending, job)
            raise
        sync_error: OSError | None = None
        try:
            pending.wait()
        except OSError as exc:  # the record is not durable: the sender must not hear Success
            sync_error = exc
        try:
            submitted.wait()
        except QueueFull as full:
            self._discard(job)
            if not isinstance(full, CompletionShareFull):  # the rest of the queue is open
                self.admission.mark_congested()  # new associations are turned away a moment
            raise
        except BaseException:
            self._discard(job)  # the sender is told to retry: keep nothing half-owned
            raise
        if sync_error is not None:
            # The broker queued it and a worker may be reading it: it stays and is delivered
            # (until a restart), and the sender, told to retry, may send it once more.
            log.error("job %s queued but its record could not be made durable: %s",
                      job.job_id, sync_error)
            self._refuse_failed_commit(sync_error)
        self.admission.spool_works()
        self._count_syncs()
        self.admission.note_received(size)
        log.debug("C-STORE accepted as job %s: %d bytes for %s", job.job_id, size,
                  ", ".join(job.destinations))
        return Status.SUCCESS, "accepted"

    def _settle_discarded(self, pending: PendingCommit, job: JobHeader) -> None:
        """Discard a staged job nobody else heard of; its record still waits for a sync
        (the journal drops a record whose instance is gone when it compacts)."""
        with contextlib.suppress(OSError):
            pending.wait()
        self._discard(job)

    def _discard(self, job: JobHeader) -> None:
        """Undo a commit; a spool that cannot take one may not let it be undone either (the
        failure is answered and logged already; a start removes what is left)."""
        with contextlib.suppress(OSError):
            self.spool.discard(job)

    def _refuse_failed_commit(self, exc: OSError) -> NoReturn:
        """0xA700 for the sender, whatever the spool's failure: a full disk, or a spool that
        cannot take commits (jobs/ gone or a file, read-only, EIO): the acceptor then refuses
        work (/readyz 503) until a check finds the spool usable again."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfResources(full_spool_comment(self.spool.root)) from exc
        why = str(exc) if exc.filename else f"{exc} (spool {self.spool.root})"
        log.error("cannot commit a C-STORE to the spool: %s; answering 0xA700 and refusing "
                  "work until the spool takes commits again", why)
        self.admission.spool_failed(why)
        raise OutOfResources("router spool cannot take commits; retry later") from exc

    def _count_syncs(self) -> None:
        """Bring the group-sync counter up to the spool's own count (any thread may lead)."""
        synced = self.spool.commit_counts()[1]
        with self._syncs_lock:
            if synced > self._syncs_counted:
                metrics.SPOOL_GROUP_SYNCS.inc(synced - self._syncs_counted)
                self._syncs_counted = synced

    def _tags(self, path: Path) -> dict[str, str]:
        # pydicom on the first header read: an acceptor whose rules read none does without.
        dicom_libraries()
        from pydicom.errors import InvalidDicomError

        from router.core.header_tags import read_tags

        try:
            return read_tags(path, self.keywords)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise DimseRefusal(
                f"dataset cannot be parsed: {exc}"[:64], Status.CANNOT_UNDERSTAND
            ) from exc

