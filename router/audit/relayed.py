"""Audit messages for the requests the router relays: a Query (PS3.15 A.5.3.10) per relayed
C-FIND, a DICOM Instances Transferred (A.5.3.7) per relayed C-GET or C-MOVE, a Procedure
Record (A.5.3.15) per relayed MPPS N-CREATE or N-SET.

The relay (router/relay/server.py) fills a `RelayedRequest` once the requester has its final
response, or has gone away; docs/audit.md "Relayed queries and retrieves" says why each field
is what it is.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from router.audit.codes import (
    INSTANCES_TRANSFERRED,
    PATIENT_NUMBER,
    PROCEDURE_RECORD,
    QUERY,
    ROLE_DESTINATION,
    ROLE_SOURCE,
    SOP_CLASS_UID,
    STUDY_INSTANCE_UID,
    Code,
)
from router.audit.messages import (  # the audit room's own builders
    AuditMessage,
    LocalApplication,
    Outcome,
    RemoteNode,
    _event,
    _identifier,
    _local,
    _message,
    _peer,
)
from router.core.dimse_status import Status, is_warning

# The identifier a query carries is recorded up to this many bytes (a C-FIND may carry
# megabytes of keys; a syslog receiver takes some kilobytes): a cut one says so.
MAX_QUERY_BYTES = 4096
# A C-MOVE may name a list of studies: this many become participant objects, the rest a count.
MAX_STUDIES = 32
# A.5.3.15: the MPPS N-CREATE creates the procedure record, its N-SETs update it.
PROCEDURE_ACTIONS = {"N-CREATE": "C", "N-SET": "U"}
# PS3.7 10.1.3 (N-SET), 10.1.5 (N-CREATE): their warnings (attribute list error, attribute
# value out of range): the upstream took the record but not all of it.
N_WARNINGS = (0x0107, 0x0116)


@dataclass(frozen=True)
class RelayedRequest:
    """One relayed C-FIND, C-GET or C-MOVE as it ended."""

    command: str
    calling_ae: str
    called_ae: str
    peer_address: str
    sop_class_uid: str  # the query/retrieve model
    transfer_syntax_uid: str  # of the identifier
    identifier: bytes | None
    upstream: RemoteNode | None  # None: no rule chose one, the router answered itself
    status: int | None  # the final status the requester got; None: it went away first
    comment: str = ""
    move_destination: RemoteNode | None = None
    completed: int = 0  # sub-operations (C-GET, C-MOVE), from the final response
    failed: int = 0
    warning: int = 0
    study_uids: tuple[str, ...] = ()  # the identifier's StudyInstanceUID values
    patient_id: str | None = None
    sop_instance_uid: str = ""  # the MPPS instance an N-CREATE made or an N-SET changed
    accessions: tuple[tuple[str, str], ...] = ()  # (study, accession number) of an MPPS
    instances: tuple[tuple[str, int], ...] = ()  # (SOP class, count) an MPPS references


def relayed_outcome(status: int | None) -> Outcome:
    """A.5.1: 0 Success; 4 (minor) a warning, a cancel, or a requester that went away; 8
    (serious) a failure: the upstream or the router could not do the request."""
    if status == Status.SUCCESS:
        return "0"
    if status is None or status == Status.CANCEL or is_warning(status):
        return "4"
    return "8"


def _status_text(request: RelayedRequest) -> str:
    if request.status is None:
        return "the requester went away before the final response; cancelled upstream"
    text = f"final status 0x{request.status:04X}"
    return f"{text}: {request.comment}" if request.comment else text


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _router(app: LocalApplication, request: RelayedRequest,
            role: Code | None = None) -> dict[str, Any]:
    return _local(app, requestor=False, role=role, called_ae=request.called_ae)


def _node(node: RemoteNode, role: Code) -> dict[str, Any]:
    """An upstream or a move destination: a DICOM peer, by AE title and host if known."""
    return _peer(node.ae_title or node.user_id, node.address, requestor=False, role=role)


def _requester(request: RelayedRequest, role: Code | None = None) -> dict[str, Any]:
    return _peer(request.calling_ae, request.peer_address, requestor=True, role=role)


def _requester_to_upstream(app: LocalApplication,
                           request: RelayedRequest) -> list[dict[str, Any]]:
    """The requester (source) sent to the upstream (destination) through the router; the
    router takes the upstream's role when no rule chose one."""
    participants = [_requester(request, ROLE_SOURCE)]
    if request.upstream is not None:
        participants += [_node(request.upstream, ROLE_DESTINATION), _router(app, request)]
    else:
        participants.append(_router(app, request, ROLE_DESTINATION))
    return participants


def query(app: LocalApplication, request: RelayedRequest) -> AuditMessage:
    """A.5.3.10 Query: the requester (source) asked the upstream (destination) through the
    router; the SOP Queried carries the identifier as sent (base64, cut past
    MAX_QUERY_BYTES) and its transfer syntax."""
    outcome = relayed_outcome(request.status)
    event = _event(QUERY, "E", outcome, None,
                   None if outcome == "0" else _status_text(request))
    participants = _requester_to_upstream(app, request)
    identifier = request.identifier or b""
    details = [{"type": "TransferSyntax", "value": _b64(request.transfer_syntax_uid.encode())}]
    if len(identifier) > MAX_QUERY_BYTES:
        details.append({"type": "QueryCut", "value": _b64(
            f"the first {MAX_QUERY_BYTES} of {len(identifier)} bytes".encode())})
    sop_queried = {
        "ParticipantObjectIDTypeCode": SOP_CLASS_UID.json(),
        "ParticipantObjectQuery": _b64(identifier[:MAX_QUERY_BYTES]),
        "ParticipantObjectDetail": details,
        "ParticipantObjectID": _identifier(request.sop_class_uid) or "unknown",
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3",
    }
    return _message(event, participants, app, [sop_queried])


def retrieve(app: LocalApplication, request: RelayedRequest) -> AuditMessage:
    """A.5.3.7 DICOM Instances Transferred for a relayed C-GET or C-MOVE (EventActionCode R:
    the router neither holds nor keeps them): the upstream sends (source), the requester
    (C-GET) or the move destination (C-MOVE) receives; the requester asked."""
    done = request.completed + request.warning
    description = (f"{request.command}: sub-operations completed {request.completed}, "
                   f"failed {request.failed}, warning {request.warning}; "
                   f"{_status_text(request)}")
    studies = request.study_uids[:MAX_STUDIES]
    if len(request.study_uids) > len(studies):
        description = f"{description}; {len(request.study_uids) - len(studies)} more studies"
    event = _event(INSTANCES_TRANSFERRED, "R", relayed_outcome(request.status), None,
                   description)
    if request.upstream is not None:
        participants = [_node(request.upstream, ROLE_SOURCE), _router(app, request)]
    else:
        participants = [_router(app, request, ROLE_SOURCE)]
    if request.move_destination is not None:
        participants += [_node(request.move_destination, ROLE_DESTINATION),
                         _requester(request)]
    else:
        participants.append(_requester(request, ROLE_DESTINATION))
    return _message(event, participants, app, _retrieved_objects(request, studies, done))


def procedure_record(app: LocalApplication, request: RelayedRequest) -> AuditMessage:
    """A.5.3.15 Procedure Record for a relayed MPPS N-CREATE (C) or N-SET (U): the requester
    (source) sent the procedure step's data to the upstream (destination); the studies of
    its scheduled steps carry the MPPS instance and accession numbers, the patient its ID."""
    outcome = "4" if request.status in N_WARNINGS else relayed_outcome(request.status)
    event = _event(PROCEDURE_RECORD, PROCEDURE_ACTIONS[request.command], outcome, None,
                   f"{request.command}; {_status_text(request)}" if outcome != "0" else None)
    return _message(event, _requester_to_upstream(app, request), app,
                    _procedure_objects(request))


def _procedure_objects(request: RelayedRequest) -> list[dict[str, Any]]:
    """An N-SET names no study (PS3.4 F.7.2.2 lets it change no scheduled step): its
    "unknown" study still carries the MPPS instance, which joins it to its N-CREATE's
    record. SOPClass (required with MPPS or Accession) counts what the step references."""
    sop_classes = [{"UID": _identifier(uid), "NumberOfInstances": count}
                   for uid, count in request.instances] or [{"NumberOfInstances": 0}]
    objects: list[dict[str, Any]] = []
    for uid in request.study_uids[:MAX_STUDIES] or ("unknown",):
        description: dict[str, Any] = {}
        if request.sop_instance_uid:
            description["MPPS"] = [{"UID": _identifier(request.sop_instance_uid)}]
        accessions = dict.fromkeys(_identifier(number) for study, number in request.accessions
                                   if study == uid or uid == "unknown")
        if accessions:
            description["Accession"] = [{"Number": number} for number in accessions]
        description["SOPClass"] = sop_classes
        objects.append({
            "ParticipantObjectIDTypeCode": STUDY_INSTANCE_UID.json(),
            "ParticipantObjectDescription": [description],
            "ParticipantObjectID": _identifier(uid) or "unknown",
            "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"})
    return objects + _patient(request)


def _patient(request: RelayedRequest) -> list[dict[str, Any]]:
    if not request.patient_id:
        return []
    return [{
        "ParticipantObjectIDTypeCode": PATIENT_NUMBER.json(),
        "ParticipantObjectID": _identifier(request.patient_id),
        "ParticipantObjectTypeCode": "1",
        "ParticipantObjectTypeCodeRole": "1",
    }]


def _retrieved_objects(request: RelayedRequest, studies: tuple[str, ...],
                       done: int) -> list[dict[str, Any]]:
    """The studies the identifier names ("unknown" when it names none, e.g. a patient-level
    retrieve); how many instances arrived only when it names one; the patient by ID."""
    objects: list[dict[str, Any]] = []
    for uid in studies or ("unknown",):
        study: dict[str, Any] = {"ParticipantObjectIDTypeCode": STUDY_INSTANCE_UID.json()}
        if len(studies) <= 1:
            study["ParticipantObjectDescription"] = [{"SOPClass": [{"NumberOfInstances": done}]}]
        study.update({"ParticipantObjectID": _identifier(uid) or "unknown",
                      "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"})
        objects.append(study)
    return objects + _patient(request)
