"""One relayed request on the requester's association: its DIMSE responses and counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from router.core import metrics
from router.core.dimse_status import PENDING_STATUSES, Status
from router.core.errors import RouterError
from router.core.messages import RelayResponse
from router.core.rules import AssociationFacts
from router.dicom.uid_tables import IMPLICIT_VR_LE

log = logging.getLogger("router.relay.server")  # the name these messages always had

# Where each request carries its dataset, and where its response carries one.
REQUEST_DATASET = {"C-FIND": "Identifier", "C-GET": "Identifier", "C-MOVE": "Identifier",
                   "N-SET": "ModificationList", "N-ACTION": "ActionInformation",
                   "N-CREATE": "AttributeList", "N-EVENT-REPORT": "EventInformation"}
RESPONSE_DATASET = {"C-FIND": "Identifier", "C-GET": "Identifier", "C-MOVE": "Identifier",
                    "N-GET": "AttributeList", "N-SET": "AttributeList",
                    "N-ACTION": "ActionReply", "N-CREATE": "AttributeList",
                    "N-EVENT-REPORT": "EventReply"}
CANCELLED = Status.CANCEL
SUB_OPERATIONS_FAILED = Status.SUB_OPERATIONS_WITH_FAILURES
# Responses that carry Number of Remaining Sub-operations (PS3.4 C.4.2.1.5: pending, and
# cancel: what was not done).
WITH_REMAINING = (*PENDING_STATUSES, Status.CANCEL)


class RequesterGone(RouterError):
    """The requester aborted or closed its association: nobody takes the response. Normal
    life, not a failure: the relay ends and its upstream is cancelled."""

    # Before the router said a word about the request: a storage commitment the broker still
    # held, which it now drops unrelayed (router/relay/commitment_relay.py).
    unheard: bool = False


@dataclass
class Counts:
    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0


class RequesterLink(Protocol):
    """The requester's association, as a relayed request needs it (the acceptor's
    router/acceptor/requester_link.py implements it on the engine)."""

    facts: AssociationFacts

    def accepted_syntax(self, context_id: int) -> str:
        """The transfer syntax accepted on a presentation context."""

    def cancelled(self, message_id: int) -> bool:
        """C-CANCEL arrived for this request, or the requester is gone."""

    def gone(self) -> bool:
        """The requester's association ended (aborted, closed)."""

    def send(self, primitive: Any, context_id: int) -> None:
        """A DIMSE response (a pynetdicom primitive) to the requester; RequesterGone when
        its association is no more."""

    def store(self, path: Path, message_id: int) -> int | None:
        """C-GET: the instance in `path` as a C-STORE to the requester; its status, or None
        when it could not be sent or answered."""

    def storage_contexts(self) -> list[list[Any]]:
        """[SOP class, [transfer syntaxes]] the requester takes C-STOREs on (SCP role)."""


class Exchange:
    """One request on one association: builds and sends its responses."""

    def __init__(self, link: RequesterLink, msg: Any, context_id: int, command: str) -> None:
        self.link, self.msg, self.context_id, self.command = link, msg, context_id, command
        self.sub_operations = 0  # C-GET: message IDs of the C-STOREs sent back
        self.transfer_syntax = link.accepted_syntax(context_id)
        # What the audit trail records once it ended (router/relay/audited.py):
        self.upstreams: list[str] = []  # the rules' choice, once made
        self.upstream = ""  # the one that answered, once one did
        self.answered_instance = ""  # the SOP instance the upstream named (an N-CREATE's)
        self.final_status: int | None = None  # the final response the requester was sent
        self.final_comment = ""
        self.final_counts: Counts | None = None

    def heard(self, answer: RelayResponse) -> None:
        """An answer from the upstream: it names which upstream the worker reached."""
        if answer.upstream:
            self.upstream = answer.upstream
        if answer.sop_instance_uid:
            self.answered_instance = answer.sop_instance_uid

    def cancelled(self) -> bool:
        """C-CANCEL arrived for this request, or the requester is gone."""
        return self.link.cancelled(int(self.msg.MessageID))

    def gone(self) -> bool:
        """The requester aborted or closed its association."""
        return self.link.gone()

    def respond(self, status: int, *, dataset: bytes | None = None, comment: str = "",
                counts: Counts | None = None, answer: RelayResponse | None = None) -> None:
        rsp = type(self.msg)()
        rsp.MessageIDBeingRespondedTo = self.msg.MessageID
        msg = self.msg
        if self.command.startswith("C-"):
            rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
        elif self.command in ("N-CREATE", "N-EVENT-REPORT"):
            rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
            instance = answer.sop_instance_uid if answer and answer.sop_instance_uid else \
                msg.AffectedSOPInstanceUID
            if instance:
                rsp.AffectedSOPInstanceUID = instance
        else:
            rsp.AffectedSOPClassUID = msg.RequestedSOPClassUID
            rsp.AffectedSOPInstanceUID = msg.RequestedSOPInstanceUID
        if self.command == "N-ACTION":
            rsp.ActionTypeID = msg.ActionTypeID
        if self.command == "N-EVENT-REPORT":
            rsp.EventTypeID = msg.EventTypeID
        rsp.Status = status
        if comment and status not in (Status.SUCCESS, *PENDING_STATUSES):
            rsp.ErrorComment = comment[:64]
        for keyword, value in (answer.status_fields.items() if answer else ()):
            if keyword in type(rsp).STATUS_OPTIONAL_KEYWORDS:  # ErrorID, OffendingElement...
                setattr(rsp, keyword, value)
        if counts is not None and self.command in ("C-GET", "C-MOVE"):
            if status in WITH_REMAINING:
                rsp.NumberOfRemainingSuboperations = counts.remaining
            rsp.NumberOfCompletedSuboperations = counts.completed
            rsp.NumberOfFailedSuboperations = counts.failed
            rsp.NumberOfWarningSuboperations = counts.warning
        if dataset:
            setattr(rsp, RESPONSE_DATASET[self.command], BytesIO(dataset))
        if answer is not None:
            self.heard(answer)
        self.link.send(rsp, self.context_id)
        if status not in PENDING_STATUSES:
            self.final_status, self.final_comment, self.final_counts = status, comment, counts

    def request_dataset(self) -> bytes | None:
        attr = REQUEST_DATASET.get(self.command)
        stream = getattr(self.msg, attr, None) if attr else None
        return stream.getvalue() if stream is not None else None

    def decoded_request_dataset(self) -> Any:
        raw = self.request_dataset()
        if raw is None:
            return None
        # Loaded with the request already (router/dicom/relayed_dimse.py).
        from pynetdicom.dsutils import decode

        return decode(BytesIO(raw), self.transfer_syntax == IMPLICIT_VR_LE, True)

    def final(self, status: int, comment: str, counts: Counts | None = None) -> None:
        """The last response, counted in the metrics once sent; RequesterGone if nobody
        takes it."""
        self.respond(status, comment=comment, counts=counts)
        metrics.DIMSE_REQUESTS.labels(self.command, f"0x{status:04X}").inc()

