"""A relayed query, retrieve or MPPS, as it ended, for the audit trail
(router/audit/relayed.py).

Called on the relay thread after the requester had its final response: building the record
reads what the exchange kept (no network), and the trail's syslog sending is on its own
thread, so neither the requester nor the upstream waits for the audit.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from router.audit.forwarded import destination_node
from router.audit.messages import RemoteNode
from router.audit.relayed import PROCEDURE_ACTIONS, RelayedRequest
from router.audit.trail import AuditTrail
from router.core.config import RouterConfig
from router.relay.exchange import Exchange
from router.relay.move_targets import move_target

log = logging.getLogger(__name__)

AUDITED = ("C-FIND", "C-GET", "C-MOVE")
# Its N-CREATE and N-SET carry a procedure record (patient, study, what was done): other
# N-services have no PS3.15 event, or carry no patient (docs/audit.md says which and why).
MPPS = "1.2.840.10008.3.1.2.3.3"
# Where an MPPS lists the instances it produced, per performed series (PS3.4 F.7.2.2).
_REFERENCES = ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence")


def audited(exchange: Exchange) -> bool:
    """Whether the trail records this relayed request."""
    if exchange.command in AUDITED:
        return True
    sop_class = str(getattr(exchange.msg, "AffectedSOPClassUID", None) or
                    getattr(exchange.msg, "RequestedSOPClassUID", None) or "")
    return exchange.command in PROCEDURE_ACTIONS and sop_class == MPPS


def record_relayed(trail: AuditTrail, config: RouterConfig, exchange: Exchange) -> None:
    """Never raises: a bug here must not cost the requester its association."""
    try:
        trail.relayed_request(relayed_request(config, exchange))
    except Exception as exc:
        log.warning("cannot audit a relayed %s (%s)", exchange.command, type(exc).__name__)


def relayed_request(config: RouterConfig, exchange: Exchange) -> RelayedRequest:
    if exchange.command in PROCEDURE_ACTIONS:
        return _procedure_step(config, exchange)
    facts, msg, counts = exchange.link.facts, exchange.msg, exchange.final_counts
    studies, patient_id = _identifier_facts(exchange)
    return RelayedRequest(
        command=exchange.command, calling_ae=facts.calling_ae, called_ae=facts.called_ae,
        peer_address=facts.source, sop_class_uid=str(msg.AffectedSOPClassUID or ""),
        transfer_syntax_uid=exchange.transfer_syntax, identifier=exchange.request_dataset(),
        upstream=_upstream(config, exchange),
        status=exchange.final_status, comment=exchange.final_comment,
        move_destination=_move_destination(config, msg) if exchange.command == "C-MOVE"
        else None,
        completed=counts.completed if counts else 0, failed=counts.failed if counts else 0,
        warning=counts.warning if counts else 0, study_uids=studies, patient_id=patient_id)


def _upstream(config: RouterConfig, exchange: Exchange) -> RemoteNode | None:
    """The one that answered, else the first the rules chose; None if they chose none."""
    upstream = exchange.upstream or next(iter(exchange.upstreams), "")
    return destination_node(upstream, config) if upstream else None


def _procedure_step(config: RouterConfig, exchange: Exchange) -> RelayedRequest:
    """An MPPS N-CREATE or N-SET: its instance (an N-CREATE's may be the upstream's), and
    the patient, studies, accession numbers and instances its dataset names."""
    facts, msg = exchange.link.facts, exchange.msg
    instance = getattr(msg, "AffectedSOPInstanceUID", None) or \
        getattr(msg, "RequestedSOPInstanceUID", None) or exchange.answered_instance
    accessions: list[tuple[str, str]] = []
    instances: Counter[str] = Counter()
    patient_id = ""
    try:
        dataset = exchange.decoded_request_dataset()
        if dataset is not None:
            patient_id = str(dataset.get("PatientID", "") or "").strip()
            for step in dataset.get("ScheduledStepAttributesSequence", None) or ():
                accessions.append((str(step.get("StudyInstanceUID", "") or "").strip(),
                                   str(step.get("AccessionNumber", "") or "").strip()))
            for series in dataset.get("PerformedSeriesSequence", None) or ():
                for name in _REFERENCES:
                    instances.update(uid for ref in series.get(name, None) or ()
                                     if (uid := str(ref.get("ReferencedSOPClassUID", "")
                                                    or "").strip()))
    except Exception:  # a dataset the upstream refuses anyway: the trail has its status
        accessions, instances = [], Counter()
    return RelayedRequest(
        command=exchange.command, calling_ae=facts.calling_ae, called_ae=facts.called_ae,
        peer_address=facts.source, sop_class_uid=MPPS,
        transfer_syntax_uid=exchange.transfer_syntax, identifier=None,
        upstream=_upstream(config, exchange), status=exchange.final_status,
        comment=exchange.final_comment,
        study_uids=tuple(dict.fromkeys(study for study, _ in accessions if study)),
        patient_id=patient_id or None, sop_instance_uid=str(instance or ""),
        accessions=tuple((study, number) for study, number in accessions if number),
        instances=tuple(sorted(instances.items())))


def _move_destination(config: RouterConfig, msg: Any) -> RemoteNode:
    """The AE the requester named, with its host when the router's tables know it (a
    pass-through move's destination may be known to the upstream only)."""
    title = str(getattr(msg, "MoveDestination", "") or "").strip()
    target = move_target(config, title)
    return RemoteNode(title, title, target[1].host if target else None)


def _identifier_facts(exchange: Exchange) -> tuple[tuple[str, ...], str | None]:
    """The Study Instance UID(s) and the Patient ID a retrieve's identifier names; none for a
    C-FIND (its whole identifier is recorded) or one that does not decode."""
    if exchange.command == "C-FIND":
        return (), None
    try:
        dataset = exchange.decoded_request_dataset()
        studies = dataset.get("StudyInstanceUID", "") if dataset is not None else ""
        patient = dataset.get("PatientID", "") if dataset is not None else ""
    except Exception:  # a request the upstream refuses anyway: the trail has its status
        return (), None
    return _values(studies), (str(patient).strip() or None)


def _values(value: Any) -> tuple[str, ...]:
    """A value that may be multi-valued (a C-MOVE of several studies), as strings."""
    items: Iterable[Any] = value if isinstance(value, Iterable) and \
        not isinstance(value, str | bytes) else [value]
    return tuple(text for item in items if (text := str(item).strip()))
