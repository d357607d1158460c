"""C-STORE as the acceptor handles it: validate, route, take ownership, hand over, answer.

Errors become DIMSE statuses here and only here; nothing escapes into pynetdicom.
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from router.acceptor.access import peer_certificate
from router.acceptor.admission import Admission
from router.acceptor.broker_client import BrokerClient
from router.audit.trail import AuditTrail
from router.core import metrics
from router.core.config import Rule
from router.core.dimse_status import Status
from router.core.errors import DimseRefusal, NoRoute, OutOfResources, QueueFull
from router.core.header_tags import read_tags
from router.core.log_context import JOB, working_on
from router.core.messages import JobHeader
from router.core.priority import FROM_DIMSE, NORMAL, PRIORITIES
from router.core.rules import AssociationFacts, RuleSet
from router.core.spool import Spool, new_job_id
from router.core.tls import subject_text
from router.core.uids import require_uid
from router.relay.server import RelayServer

log = logging.getLogger(__name__)

_RESULT_LABELS = {
    Status.SUCCESS: "accepted",
    Status.NO_ROUTE: "no_route",
    Status.INVALID_UID: "invalid_uid",
    Status.OUT_OF_RESOURCES: "out_of_resources",
    Status.DATASET_TOO_LARGE: "too_large",
    Status.REJECTED_BY_RULE: "rejected",
}
# Read when any rule waits for study/series completion: the group and the batch order.
COMPLETION_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber")


def status_dataset(status: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment[:64]  # LO: at most 64 characters
    return ds


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
        self.set_rules(rules, max_dataset_bytes)

    def set_rules(self, rules: RuleSet, max_dataset_bytes: int | None) -> None:
        """At start and on a config reload; a C-STORE in progress keeps the rules it read."""
        # One header read serves both the rules and the audit trail (per-study records).
        audit_keywords = ("StudyInstanceUID", "PatientID") if self.audit is not None else ()
        completion = COMPLETION_KEYWORDS if rules.completes else ()
        self.keywords = tuple(sorted({*rules.tag_keywords, *audit_keywords, *completion}))
        self.rules = rules
        self.max_dataset_bytes = max_dataset_bytes

    def __call__(self, event: Any) -> Dataset:
        progress = getattr(event.assoc, "router_progress", None)
        with working_on(association=progress.key if progress is not None else None):
            return self._answer(event)

    def _answer(self, event: Any) -> Dataset:
        tags: dict[str, str] = {}
        label = ""
        try:
            status, label = self._store(event, tags)
            comment = ""
        except DimseRefusal as exc:
            status, comment = exc.status, str(exc)
            log.warning("C-STORE refused with 0x%04X: %s", status, exc)
        except Exception:  # the handler boundary: an unexpected error is a failure status
            log.exception("C-STORE failed unexpectedly")
            status, comment = Status.PROCESSING_FAILURE, "router internal error; see its log"
        metrics.INSTANCES_RECEIVED.labels(label or _RESULT_LABELS.get(status, "error")).inc()
        metrics.DIMSE_REQUESTS.labels("C-STORE", f"0x{status:04X}").inc()
        if self.audit is not None:
            self._tally(event, tags, status == Status.SUCCESS)
        return status_dataset(status, comment)

    def _tally(self, event: Any, tags: dict[str, str], ok: bool) -> None:
        tally = getattr(event.assoc, "router_tally", None)
        if tally is not None:
            sop_class = str(event.request.AffectedSOPClassUID)
            tally.add(tags.get("StudyInstanceUID", "unknown"), sop_class, ok,
                      tags.get("PatientID"))

    def _store(self, event: Any, tags: dict[str, str]) -> tuple[Status, str]:
        request = event.request
        sop_class = require_uid(request.AffectedSOPClassUID, "Affected SOP Class UID")
        sop_instance = require_uid(request.AffectedSOPInstanceUID, "Affected SOP Instance UID")
        received: Path = event.dataset_path
        size = received.stat().st_size  # its bytes were counted as they arrived (live_status)
        # The read guard stops writing a dataset past the limit and says so on the association.
        truncated = getattr(event.assoc, "router_dataset_truncated", False)
        event.assoc.router_dataset_truncated = False
        if getattr(event.assoc, "router_disk_full", False):
            event.assoc.router_disk_full = False
            raise OutOfResources("spool disk full while receiving; retry later")
        if truncated or (self.max_dataset_bytes is not None and size > self.max_dataset_bytes):
            limit = self.max_dataset_bytes
            raise DimseRefusal(f"dataset exceeds the router's limit of {limit} bytes",
                               Status.DATASET_TOO_LARGE)
        if self.relay is not None and self.relay.take_move_instance(event, received):
            return Status.SUCCESS, "relayed"  # a relayed C-MOVE's instance, for its move
        refusal = self.admission.refusal(new_association=False)
        if refusal is not None:
            metrics.REFUSALS.labels(refusal[0]).inc()
            raise OutOfResources(f"{refusal[1]}; retry later")
        facts = AssociationFacts.of(event.assoc)
        def header() -> dict[str, str]:
            if not tags:
                tags.update(self._tags(received))
            return tags

        if self.audit is not None:
            header()
        decision = self.rules.route(facts, header, sop_class)
        if decision.action == "drop":
            metrics.INSTANCES_DROPPED.labels(decision.rules[-1]).inc()
            log.info("C-STORE dropped by rule %s (answered Success, nothing kept)",
                     decision.rules[-1])
            return Status.SUCCESS, "dropped"
        if decision.action == "reject":
            raise DimseRefusal(f"refused by the router's rule {decision.rules[-1]}",
                               Status.REJECTED_BY_RULE)
        if not decision.matched:
            raise NoRoute(f"no routing rule matches (calling AE {facts.calling_ae})")
        group, instance_number = "", 0
        if decision.complete is not None and decision.complete.complete is not None:
            group, instance_number = self._group(decision.complete, header())
        job = JobHeader(
            job_id=new_job_id(),
            calling_ae=facts.calling_ae,
            called_ae=facts.called_ae,
            peer_address=facts.source,
            peer_port=int(event.assoc.requestor.port),
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            size=size,
            received_at=time.time(),
            rules=decision.rules,
            destinations=decision.destinations,
            tls_subject=subject_text(peer_certificate(event.assoc)),
            priority=_priority(decision.priority, event.request),
            group=group,
            instance_number=instance_number,
        )
        JOB.set(job.job_id)  # for structured logs; undone by working_on
        try:
            self.spool.commit(job, received)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.spool.discard(job)
            raise OutOfResources("spool disk full; retry later") from exc
        self.admission.note_received(size)
        try:
            self.broker.submit(job)
        except QueueFull:
            self.spool.discard(job)
            self.admission.mark_congested()  # new associations are turned away for a moment
            raise
        except BaseException:
            self.spool.discard(job)  # the sender is told to retry: keep nothing half-owned
            raise
        log.debug("C-STORE accepted as job %s: %d bytes for %s", job.job_id, size,
                  ", ".join(job.destinations))
        return Status.SUCCESS, "accepted"

    @staticmethod
    def _group(rule: Rule, tags: dict[str, str]) -> tuple[str, int]:
        assert rule.complete is not None
        keyword = "StudyInstanceUID" if rule.complete.level == "study" else "SeriesInstanceUID"
        uid = tags.get(keyword, "")
        try:
            number = int(float(tags.get("InstanceNumber", "0") or 0))
        except ValueError:
            number = 0
        # Without the UID the instance cannot join a group: it goes on its own, at once.
        return (f"{rule.name}|{uid}", number) if uid else ("", 0)

    def _tags(self, path: Path) -> dict[str, str]:
        try:
            return read_tags(path, self.keywords)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise DimseRefusal(
                f"dataset cannot be parsed: {exc}"[:64], Status.CANNOT_UNDERSTAND
            ) from exc


def _priority(rule_priority: str, request: Any) -> int:
    if rule_priority != "request":
        return PRIORITIES[rule_priority]
    return FROM_DIMSE.get(int(getattr(request, "Priority", 0) or 0), NORMAL)
