"""The acceptor's DIMSE side of relayed requests: C-FIND, C-GET, C-MOVE (with C-CANCEL) and
the N-services, answered from what the upstream says, as it says it.

pynetdicom's own SCP service classes want every answer up front from a handler (and do
C-MOVE sub-operations themselves); a proxy needs to pass pending responses through as they
arrive, relay the upstream's sub-operation counts and cancel upstream. So the association
hands these requests here (`RouterAssociation._serve_request`), and this module sends the
DIMSE responses itself. Exceptions never escape into pynetdicom: every path ends with a final
response carrying a proper status.
"""

from __future__ import annotations

import logging
import queue
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import zmq
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dsutils import decode

from router.core import metrics
from router.core.config import DicomDestination, KnownAE, RouterConfig
from router.core.dimse_status import (
    is_delivered,
    is_warning,
    relay_failure_status,
    relay_no_route_status,
)
from router.core.errors import DeliveryError
from router.core.messages import JobHeader, RelayRequest, RelayResponse, RelayStore
from router.core.rules import AssociationFacts, RuleSet
from router.core.spool import Spool
from router.dicom.relay_association import RELAYED_COMMANDS
from router.relay.call import RelayCall, RelayTimeout
from router.relay.state import Commitments, MoveRelay, MoveRelays

log = logging.getLogger(__name__)

COMMANDS = RELAYED_COMMANDS
# Where each request carries its dataset, and where its response carries one.
REQUEST_DATASET = {"C-FIND": "Identifier", "C-GET": "Identifier", "C-MOVE": "Identifier",
                   "N-SET": "ModificationList", "N-ACTION": "ActionInformation",
                   "N-CREATE": "AttributeList", "N-EVENT-REPORT": "EventInformation"}
RESPONSE_DATASET = {"C-FIND": "Identifier", "C-GET": "Identifier", "C-MOVE": "Identifier",
                    "N-GET": "AttributeList", "N-SET": "AttributeList",
                    "N-ACTION": "ActionReply", "N-CREATE": "AttributeList",
                    "N-EVENT-REPORT": "EventReply"}
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
CANCELLED = 0xFE00
MOVE_DESTINATION_UNKNOWN = 0xA801
SUB_OPERATIONS_FAILED = 0xB000


@dataclass
class Counts:
    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0

    def record(self, status: int | None) -> None:
        if status is not None and is_warning(status):
            self.warning += 1
        elif status is not None and is_delivered(status):
            self.completed += 1
        else:
            self.failed += 1
        self.remaining = max(0, self.remaining - 1)


class Exchange:
    """One request on one association: builds and sends its responses."""

    def __init__(self, assoc: Any, msg: Any, context_id: int, command: str) -> None:
        self.assoc, self.msg, self.context_id, self.command = assoc, msg, context_id, command
        self.sub_operations = 0  # C-GET: message IDs of the C-STOREs sent back
        self.transfer_syntax = str(assoc._accepted_cx[context_id].transfer_syntax[0])

    def cancelled(self) -> bool:
        """C-CANCEL arrived for this request, or the requester is gone."""
        return self.msg.MessageID in self.assoc.dimse.cancel_req or \
            not self.assoc.is_established

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
        if comment and status not in (0x0000, 0xFF00, 0xFF01):
            rsp.ErrorComment = comment[:64]
        for keyword, value in (answer.status_fields.items() if answer else ()):
            if keyword in type(rsp).STATUS_OPTIONAL_KEYWORDS:  # ErrorID, OffendingElement...
                setattr(rsp, keyword, value)
        if counts is not None and self.command in ("C-GET", "C-MOVE"):
            if status in (0xFF00, 0xFF01):
                rsp.NumberOfRemainingSuboperations = counts.remaining
            rsp.NumberOfCompletedSuboperations = counts.completed
            rsp.NumberOfFailedSuboperations = counts.failed
            rsp.NumberOfWarningSuboperations = counts.warning
        if dataset:
            setattr(rsp, RESPONSE_DATASET[self.command], BytesIO(dataset))
        self.assoc.dimse.send_msg(rsp, self.context_id)

    def request_dataset(self) -> bytes | None:
        attr = REQUEST_DATASET.get(self.command)
        stream = getattr(self.msg, attr, None) if attr else None
        return stream.getvalue() if stream is not None else None

    def decoded_request_dataset(self) -> Any:
        raw = self.request_dataset()
        if raw is None:
            return None
        return decode(BytesIO(raw), self.transfer_syntax == ImplicitVRLittleEndian, True)


class RelayServer:
    def __init__(self, config: RouterConfig, context: zmq.Context[zmq.Socket[bytes]],
                 endpoint: str, rules: RuleSet, spool: Spool) -> None:
        self.config = config
        self.context = context
        self.endpoint = endpoint
        self.rules = rules
        self.spool = spool
        self.moves = MoveRelays()
        self.commitments = Commitments(spool.root / "commitments")

    def reconfigure(self, config: RouterConfig, rules: RuleSet) -> None:
        """A config reload: requests from now on use the new rules and tables."""
        self.config, self.rules = config, rules

    # --- entry point from the association --------------------------------------------------

    def serve(self, assoc: Any, msg: Any, context_id: int) -> None:
        command = COMMANDS[type(msg)]
        exchange = Exchange(assoc, msg, context_id, command)
        try:
            self._serve(exchange)
        except Exception:  # the handler boundary: a failure status, never an escape
            log.exception("relaying %s failed unexpectedly", command)
            self._final(exchange, relay_failure_status(command), "router internal error")

    def _final(self, exchange: Exchange, status: int, comment: str,
               counts: Counts | None = None) -> None:
        metrics.DIMSE_REQUESTS.labels(exchange.command, f"0x{status:04X}").inc()
        try:
            exchange.respond(status, comment=comment, counts=counts)
        except Exception as exc:  # the requester may be gone already
            log.debug("final %s response not sent: %s", exchange.command, exc)

    def _serve(self, exchange: Exchange) -> None:
        msg, command = exchange.msg, exchange.command
        sop_class = str(getattr(msg, "AffectedSOPClassUID", None) or msg.RequestedSOPClassUID)
        if command == "N-EVENT-REPORT" and sop_class == STORAGE_COMMITMENT:
            if not self._commitment_result(exchange):
                # A result for no commitment this router relayed (or one already delivered):
                # routing it by the rules could send it back where it came from.
                log.warning("storage commitment result for an unknown transaction from %s: "
                            "refused", exchange.assoc.requestor.ae_title)
                self._final(exchange, 0x0110, "no storage commitment with that transaction")
            return
        facts = AssociationFacts.of(exchange.assoc)
        decision = self.rules.upstreams(facts, sop_class)
        if not decision.matched:
            log.warning("%s for SOP class %s from %s: no rule routes it", command, sop_class,
                        facts.calling_ae)
            self._final(exchange, relay_no_route_status(command),
                        f"no routing rule for {command} of this SOP class")
            return
        if command == "N-ACTION" and sop_class == STORAGE_COMMITMENT:
            if facts.calling_ae not in self.config.known_aes:
                log.error("storage commitment from %s refused: add it to known_aes (host and "
                          "port where it takes the result)", facts.calling_ae)
                self._final(exchange, 0x0110, "requester not in the router's known_aes")
                return
            self._remember_commitment(exchange, facts.calling_ae)
        request = self._request(exchange, sop_class, list(decision.destinations), facts)
        if command == "C-MOVE" and self._relays_moves(decision.destinations[0]):
            self._relay_move(exchange, request)
        elif command == "C-GET":
            self._relay_get(exchange, request)
        else:
            self._pass_through(exchange, request)

    def _request(self, exchange: Exchange, sop_class: str, upstreams: list[str],
                 facts: AssociationFacts, **overrides: Any) -> RelayRequest:
        msg = exchange.msg
        dataset = exchange.request_dataset()
        instance = getattr(msg, "AffectedSOPInstanceUID", None) or \
            getattr(msg, "RequestedSOPInstanceUID", None) or ""
        attribute_ids = getattr(msg, "AttributeIdentifierList", None) or []
        if not isinstance(attribute_ids, list):
            attribute_ids = [attribute_ids]
        values: dict[str, Any] = {
            "request_id": uuid.uuid4().hex, "command": exchange.command,
            "upstreams": upstreams, "calling_ae": facts.calling_ae,
            "called_ae": facts.called_ae, "peer_address": facts.source,
            "sop_class_uid": sop_class, "transfer_syntax_uid": exchange.transfer_syntax,
            "sop_instance_uid": str(instance), "priority": int(getattr(msg, "Priority", 0) or 0),
            "move_destination": str(getattr(msg, "MoveDestination", "") or "").strip(),
            "action_type_id": int(getattr(msg, "ActionTypeID", 0) or 0),
            "event_type_id": int(getattr(msg, "EventTypeID", 0) or 0),
            "attribute_ids": [int(t) for t in attribute_ids],
            "has_dataset": dataset is not None,
        }
        if exchange.command == "C-GET":
            values["storage_contexts"] = _storage_contexts(exchange.assoc)
        values.update(overrides)
        return RelayRequest(**values)

    def _call(self, request: RelayRequest, exchange: Exchange) -> RelayCall:
        return RelayCall(self.context, self.endpoint, request, exchange.request_dataset(),
                         self.config.request_timeout)

    # --- C-FIND, pass-through C-MOVE, N-services: answers as they come ----------------------

    def _pass_through(self, exchange: Exchange, request: RelayRequest) -> int:
        """Relay every answer as it comes; the final status answered (or a failure)."""
        call = self._call(request, exchange)
        try:
            while True:
                answer, payload = call.next(exchange.cancelled)
                if not isinstance(answer, RelayResponse):
                    continue  # instances come only for C-GET
                counts = _counts(answer)
                if answer.final:
                    metrics.DIMSE_REQUESTS.labels(exchange.command,
                                                  f"0x{answer.status:04X}").inc()
                exchange.respond(answer.status, dataset=payload, comment=answer.error_comment,
                                 counts=counts, answer=answer)
                if answer.final:
                    return answer.status
        except RelayTimeout as exc:
            status = relay_failure_status(exchange.command)
            self._final(exchange, status, str(exc))
            return status
        finally:
            call.close()

    # --- C-GET: the upstream's instances sent on the requester's association ---------------

    def _relay_get(self, exchange: Exchange, request: RelayRequest) -> None:
        call = self._call(request, exchange)
        counts = Counts()
        try:
            while True:
                answer, _ = call.next(exchange.cancelled)
                if isinstance(answer, RelayStore):
                    counts.remaining = max(counts.remaining, 1)
                    counts.record(self._send_sub_operation(exchange, answer))
                    call.ack()
                    exchange.respond(0xFF00, counts=counts)
                    continue
                if not answer.final:
                    if answer.remaining >= 0:
                        counts.remaining = answer.remaining
                    continue
                self._final(exchange, _final_status(answer.status, counts, call.cancelled),
                            answer.error_comment, counts)
                return
        except RelayTimeout as exc:
            self._final(exchange, relay_failure_status("C-GET"), str(exc), counts)
        finally:
            call.close()

    def _send_sub_operation(self, exchange: Exchange, store: RelayStore) -> int | None:
        path = self.spool.relay / Path(store.file_name).name
        try:
            status = exchange.assoc.send_c_store(path, msg_id=_sub_message_id(exchange))
            return int(status.Status) if status is not None and "Status" in status else None
        except (ValueError, RuntimeError, OSError) as exc:
            log.warning("C-GET sub-operation (SOP class %s) not sent to the requester: %s",
                        store.sop_class_uid, exc)
            return None
        finally:
            path.unlink(missing_ok=True)

    # --- C-MOVE in relay mode: the upstream sends to the router, the router delivers -------

    def _relays_moves(self, upstream: str) -> bool:
        dest = self.config.destinations.get(upstream)
        return isinstance(dest, DicomDestination) and dest.move_mode == "relay"

    def _move_target(self, title: str) -> tuple[str, DicomDestination] | None:
        """The router's own table: known_aes, then DICOM destinations by AE title."""
        known: KnownAE | None = self.config.known_aes.get(title)
        if known is not None:
            return title, DicomDestination(type="dicom", ae_title=title, host=known.host,
                                           port=known.port, tls=known.tls)
        for name, dest in self.config.destinations.items():
            if isinstance(dest, DicomDestination) and dest.ae_title == title:
                return name, dest
        return None

    def _relay_move(self, exchange: Exchange, request: RelayRequest) -> None:
        target = self._move_target(request.move_destination)
        if target is None:
            log.warning("C-MOVE to %r refused: not among known_aes or destinations",
                        request.move_destination)
            self._final(exchange, MOVE_DESTINATION_UNKNOWN,
                        f"move destination {request.move_destination} unknown")
            return
        upstream = self.config.destinations[request.upstreams[0]]
        assert isinstance(upstream, DicomDestination)
        move = self.moves.open(upstream.calling_ae or self.config.ae_title)
        relayed = RelayRequest(**{**request.__dict__, "move_destination": self.config.ae_title,
                                  "move_message_id": move.message_id,
                                  "upstreams": request.upstreams[:1]})
        from router.dicom.store_sender import DicomDestination as Sender

        sender = Sender(target[0], target[1], self.config.ae_title)
        call = self._call(relayed, exchange)
        counts = Counts()
        try:
            self._move_loop(exchange, call, move, sender, counts)
        except RelayTimeout as exc:
            self._final(exchange, relay_failure_status("C-MOVE"), str(exc), counts)
        finally:
            call.close()
            self.moves.close(move)
            sender.close()
            _discard(move)

    def _move_loop(self, exchange: Exchange, call: RelayCall, move: MoveRelay, sender: Any,
                   counts: Counts) -> None:
        while True:
            self._deliver_arrived(exchange, move, sender, counts)
            got = call.poll(exchange.cancelled, wait=0.05)
            if got is None:
                continue
            answer = got[0]
            if not isinstance(answer, RelayResponse):
                continue
            if not answer.final:
                if answer.remaining >= 0:
                    counts.remaining = answer.remaining
                continue
            self._deliver_arrived(exchange, move, sender, counts)  # sent before the final
            self._final(exchange, _final_status(answer.status, counts, call.cancelled),
                        answer.error_comment, counts)
            return

    def _deliver_arrived(self, exchange: Exchange, move: MoveRelay, sender: Any,
                         counts: Counts) -> None:
        while True:
            try:
                path, sop_class, sop_instance, syntax = move.arrived.get_nowait()
            except queue.Empty:
                return
            job = JobHeader(job_id=path.stem, calling_ae="", called_ae="", peer_address="",
                            peer_port=0, sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                            transfer_syntax_uid=syntax, size=0, received_at=0.0, rules=(),
                            destinations=())
            try:
                sender.deliver(job, path)
                counts.record(0x0000)
            except DeliveryError as exc:
                log.warning("relayed C-MOVE: %s", exc)
                counts.record(None)
            finally:
                path.unlink(missing_ok=True)
            exchange.respond(0xFF00, counts=counts)

    def take_move_instance(self, event: Any, source: Path) -> bool:
        """From the C-STORE handler: an instance of a relayed C-MOVE goes to its move."""
        request = event.request
        move = self.moves.find(getattr(request, "MoveOriginatorMessageID", None),
                               getattr(request, "MoveOriginatorApplicationEntityTitle", None))
        if move is None:
            return False
        target = self.spool.relay / f"move-{move.message_id}-{uuid.uuid4().hex}.dcm"
        source.replace(target)
        move.arrived.put((target, str(request.AffectedSOPClassUID),
                          str(request.AffectedSOPInstanceUID), str(event.context.transfer_syntax)))
        return True

    # --- storage commitment results ---------------------------------------------------------

    def _remember_commitment(self, exchange: Exchange, requester_ae: str) -> None:
        try:
            dataset = exchange.decoded_request_dataset()
            transaction = str(dataset.TransactionUID)
        except Exception as exc:
            log.warning("storage commitment request without a readable Transaction UID: %s",
                        exc)
            return
        self.commitments.remember(transaction, requester_ae)

    def _commitment_result(self, exchange: Exchange) -> bool:
        """An upstream's N-EVENT-REPORT with a commitment result: on to the requester (a known
        AE) on a new association; the upstream gets the requester's answer."""
        try:
            transaction = str(exchange.decoded_request_dataset().TransactionUID)
        except Exception:
            return False
        commitment = self.commitments.take(transaction)
        if commitment is None:
            return False
        requester = commitment.requester_ae
        if requester not in self.config.known_aes:
            log.error("storage commitment result for %s cannot be delivered: add it to "
                      "known_aes (host and port where it takes N-EVENT-REPORT)", requester)
            self.commitments.restore(transaction, commitment)  # a reload may add it
            self._final(exchange, 0x0110, f"requester {requester} not in known_aes")
            return True
        request = self._request(exchange, STORAGE_COMMITMENT, [requester],
                                AssociationFacts.of(exchange.assoc), to_known_ae=True)
        if self._pass_through(exchange, request) != 0x0000:
            # Not delivered: the upstream got the failure and may send the result again.
            self.commitments.restore(transaction, commitment)
        return True


def _counts(answer: RelayResponse) -> Counts | None:
    if answer.completed < 0 and answer.remaining < 0:
        return None
    return Counts(max(answer.remaining, 0), max(answer.completed, 0), max(answer.failed, 0),
                  max(answer.warning, 0))


def _final_status(upstream_status: int, counts: Counts, cancelled: bool) -> int:
    if cancelled or upstream_status == CANCELLED:
        return CANCELLED
    if upstream_status in (0x0000, SUB_OPERATIONS_FAILED) and counts.failed + counts.warning:
        return SUB_OPERATIONS_FAILED
    return upstream_status


def _sub_message_id(exchange: Exchange) -> int:
    exchange.sub_operations += 1
    return int((exchange.msg.MessageID + exchange.sub_operations) % 65535) or 1


def _storage_contexts(assoc: Any) -> list[list[Any]]:
    """The storage contexts the requester takes C-STOREs on (SCP role), for the upstream."""
    out: dict[str, list[str]] = {}
    for cx in assoc.accepted_contexts:
        if cx.as_scu:  # we send on it: the requester is its SCP
            out.setdefault(str(cx.abstract_syntax), [])
            for ts in cx.transfer_syntax:
                if str(ts) not in out[str(cx.abstract_syntax)]:
                    out[str(cx.abstract_syntax)].append(str(ts))
    return [[sop, syntaxes] for sop, syntaxes in out.items()]


def _discard(move: MoveRelay) -> None:
    """Instances of a move that ended (cancel, failure) before they were delivered."""
    while True:
        try:
            path = move.arrived.get_nowait()[0]
        except queue.Empty:
            return
        path.unlink(missing_ok=True)

