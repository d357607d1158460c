"""The acceptor's DIMSE side of relayed requests: C-FIND, C-GET, C-MOVE (with C-CANCEL) and
the N-services, answered from what the upstream says, as it says it.

A proxy passes pending responses through as they arrive, relays the upstream's
sub-operation counts and cancels upstream. The acceptor's connection hands each relayed
request here (router/acceptor/connection.py, on a relay thread of the association), and
this module sends the DIMSE responses through the requester's `RequesterLink`
(exchange.py; a relayed C-MOVE's deliveries are move.py's). Exceptions never escape into
the connection: every path ends with a final response carrying a proper status.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import zmq

from router.audit.trail import AuditTrail
from router.core import metrics
from router.core.config import RouterConfig
from router.core.dimse_status import (
    Status,
    relay_failure_status,
    relay_no_route_status,
)
from router.core.messages import RelayRequest, RelayResponse, RelayStore
from router.core.owned_names import relay_request_id, relayed_get_files, unlink_all
from router.core.rules import AssociationFacts, RuleSet
from router.core.spool import Spool
from router.relay.audited import audited, record_relayed
from router.relay.call import RelayCall, RelayTimeout, RouterStopping
from router.relay.commitment_relay import STORAGE_COMMITMENT, CommitmentRelay, TransactionTaken
from router.relay.commitment_results import KeptResults
from router.relay.exchange import Counts, Exchange, RequesterGone, RequesterLink
from router.relay.move import RelayedMoves
from router.relay.move_registry import ArrivingInstance, RegistryUnavailable
from router.relay.move_targets import relays_moves
from router.relay.result_courier import ResultCourier
from router.relay.state import Commitments
from router.relay.sub_operations import SubOperations

log = logging.getLogger(__name__)

# The requests the acceptor relays, by the name of their pynetdicom primitive's type (by name:
# pynetdicom comes with the first relayed request, router/dicom/relayed_dimse.py).
COMMANDS: dict[str, str] = {
    "C_FIND": "C-FIND", "C_GET": "C-GET", "C_MOVE": "C-MOVE", "N_GET": "N-GET", "N_SET": "N-SET",
    "N_ACTION": "N-ACTION", "N_CREATE": "N-CREATE", "N_DELETE": "N-DELETE",
    "N_EVENT_REPORT": "N-EVENT-REPORT",
}
# After a C-GET ended without its final answer, a worker may be moving one more instance into
# relay/ while the cancel travels: a second look this much later takes it.
LATE_CLEAR_SECONDS = 10.0
# Behind a load balancer the result may be another cell's: say how the cells share them.
_OTHER_CELL = (" (with several router cells behind a load balancer, it may be another "
               "cell's: set spool.shared_state_dir, README \"Scaling out\")")


class RelayServer(CommitmentRelay):
    def __init__(self, config: RouterConfig, context: zmq.Context[zmq.Socket[bytes]],
                 endpoint: str, rules: RuleSet, spool: Spool,
                 audit: AuditTrail | None = None) -> None:
        self.config = config
        self.audit = audit  # records each relayed C-FIND, C-GET, C-MOVE and MPPS as it ends
        self.context = context
        self.endpoint = endpoint
        self.rules = rules
        self.spool = spool
        self.moves = RelayedMoves(spool, config.spool)
        # Shared by the cells behind a load balancer when spool.shared_state_dir is set: the
        # PACS's N-EVENT-REPORT may reach another cell than the one that relayed the N-ACTION.
        self.commitments = Commitments(config.spool.state_folder("commitments"))
        self.results = KeptResults(config.spool.state_folder("commitments"))
        self.courier = ResultCourier(lambda: self.config, context, endpoint, self.results)

    def reconfigure(self, config: RouterConfig, rules: RuleSet) -> None:
        """A config reload: requests from now on use the new rules and tables."""
        self.config, self.rules = config, rules

    # --- entry point from the association --------------------------------------------------

    def serve(self, link: RequesterLink, msg: Any, context_id: int) -> None:
        command = COMMANDS[type(msg).__name__]
        exchange = Exchange(link, msg, context_id, command)
        try:
            self._serve(exchange)
        except RequesterGone as exc:  # an abort or a close mid-operation: normal life
            log.info("relayed %s from %s ended: the requester went away (%s); cancelled "
                     "upstream", command, exchange.link.facts.calling_ae, exc)
        except RouterStopping as exc:  # the acceptor stops under it: a failure to retry
            status = relay_failure_status(command)
            log.warning("relayed %s from %s ended: the router is stopping; the requester gets "
                        "0x%04X", command, exchange.link.facts.calling_ae, status)
            with contextlib.suppress(RequesterGone):
                exchange.final(status, str(exc))
        except RegistryUnavailable as exc:  # the shared volume gone for now: retry later
            status = relay_failure_status(command)
            log.error("relayed %s from %s refused with 0x%04X: %s (spool.shared_state_dir "
                      "not mounted or not writable?)", command,
                      exchange.link.facts.calling_ae, status, exc)
            with contextlib.suppress(RequesterGone):
                exchange.final(status, "router's shared state unavailable; retry later")
        except Exception as exc:  # the handler boundary: a failure status, never an escape
            log.error("relaying %s failed unexpectedly: %s: %s", command,
                      type(exc).__name__, exc)
            with contextlib.suppress(RequesterGone):
                exchange.final(relay_failure_status(command), "router internal error")
        finally:
            if self.audit is not None and audited(exchange):
                record_relayed(self.audit, self.config, exchange)

    def _serve(self, exchange: Exchange) -> None:
        msg, command = exchange.msg, exchange.command
        sop_class = str(getattr(msg, "AffectedSOPClassUID", None) or msg.RequestedSOPClassUID)
        if command == "N-EVENT-REPORT" and sop_class == STORAGE_COMMITMENT:
            if not self._commitment_result(exchange):
                # A result for no commitment this router relayed (or one already delivered):
                # routing it by the rules could send it back where it came from.
                log.warning("storage commitment result for an unknown transaction from %s: "
                            "refused%s", exchange.link.facts.calling_ae,
                            "" if self.config.spool.shared_state_dir else _OTHER_CELL)
                exchange.final(Status.PROCESSING_FAILURE,
                               "no storage commitment with that transaction")
            return
        facts = exchange.link.facts
        decision = self.rules.upstreams(facts, sop_class)
        exchange.upstreams = list(decision.destinations)
        if not decision.matched:
            log.warning("%s for SOP class %s from %s: no rule routes it", command, sop_class,
                        facts.calling_ae)
            exchange.final(relay_no_route_status(command),
                           f"no routing rule for {command} of this SOP class")
            return
        if command == "N-ACTION" and sop_class == STORAGE_COMMITMENT:
            if facts.calling_ae not in self.config.known_aes:
                log.error("storage commitment from %s refused: add it to known_aes (host and "
                          "port where it takes the result)", facts.calling_ae)
                exchange.final(Status.PROCESSING_FAILURE, "requester not in the router's known_aes")
                return
            try:
                transaction = self._remember_commitment(exchange, facts.calling_ae)
            except TransactionTaken as taken:
                exchange.final(taken.status, str(taken))
                return
        request = self._request(exchange, sop_class, list(decision.destinations), facts)
        if command == "N-ACTION" and sop_class == STORAGE_COMMITMENT:
            self._relay_commitment(exchange, request, transaction)
            return
        if command == "C-MOVE" and relays_moves(self.config, decision.destinations[0]):
            self.moves.relay(exchange, request, self.config,
                             lambda relayed: self._call(relayed, exchange))
        elif command == "C-GET":
            self._relay_get(exchange, request)
        elif command == "C-MOVE":
            self.moves.pass_through(request, lambda passed: self._pass_through(exchange, passed))
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
            "request_id": relay_request_id(), "command": exchange.command,
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
            values["storage_contexts"] = exchange.link.storage_contexts()
        values.update(overrides)
        return RelayRequest(**values)

    def _call(self, request: RelayRequest, exchange: Exchange) -> RelayCall:
        return RelayCall(self.context, self.endpoint, request, exchange.request_dataset(),
                         self.config.request_timeout, request.hold_seconds)

    # --- C-FIND, pass-through C-MOVE, N-services: answers as they come ----------------------

    def _pass_through(self, exchange: Exchange, request: RelayRequest) -> int | None:
        """Relay every answer as it comes; the upstream's final status, None when no status
        came from it (the router's timeout, an abort: the requester got a failure, and the
        upstream may have taken the request all the same)."""
        call = self._call(request, exchange)
        try:
            while True:
                answer, payload = _next(call, exchange)
                if not isinstance(answer, RelayResponse):
                    continue  # instances come only for C-GET
                counts = _counts(answer)
                exchange.respond(answer.status, dataset=payload, comment=answer.error_comment,
                                 counts=counts, answer=answer)
                if answer.final:
                    metrics.DIMSE_REQUESTS.labels(exchange.command,
                                                  f"0x{answer.status:04X}").inc()
                    return None if answer.unanswered else answer.status
        except RelayTimeout as exc:
            status = relay_failure_status(exchange.command)
            log.warning("relayed %s: %s (request_timeout); the requester gets 0x%04X",
                        exchange.command, exc, status)
            exchange.final(status, str(exc))
            return None
        finally:
            call.close()

    # --- C-GET: the upstream's instances sent on the requester's association ---------------

    def _relay_get(self, exchange: Exchange, request: RelayRequest) -> None:
        call = self._call(request, exchange)
        subs = SubOperations()
        sent: Counts | None = None
        try:
            while True:
                answer, _ = _next(call, exchange)
                if isinstance(answer, RelayStore):
                    self._sub_operation(exchange, answer, subs)
                    call.ack()
                else:
                    subs.upstream(answer)
                    if answer.final:
                        cancelled = call.cancelled or exchange.cancelled()
                        exchange.final(subs.final_status(answer.status, cancelled),
                                       answer.error_comment, subs.counts())
                        return
                if subs.known and (counts := subs.counts()) != sent:
                    sent = counts  # a pending response once the upstream said how many
                    exchange.respond(Status.PENDING, counts=counts)
        except RelayTimeout as exc:
            status = relay_failure_status("C-GET")
            log.warning("relayed C-GET: %s (request_timeout); the requester gets 0x%04X",
                        exc, status)
            exchange.final(status, str(exc), subs.counts())
        finally:
            call.close()
            self._clear_get_instances(request.request_id)
            if not call.finished:
                timer = threading.Timer(LATE_CLEAR_SECONDS, self._clear_get_instances,
                                        (request.request_id,))
                timer.daemon = True
                timer.start()

    def _clear_get_instances(self, request_id: str) -> None:
        """A C-GET's instances left in relay/ when it ended: nobody passes them on. One a
        worker moved in and died before announcing, or moved in after the call ended without
        a final answer (a timeout: the requester has its failure)."""
        left = unlink_all(relayed_get_files(self.spool.relay, request_id))
        if left:
            log.warning("removed %d instance(s) of relayed C-GET %s from relay/ that the "
                        "requester was never sent", left, request_id)

    def _sub_operation(self, exchange: Exchange, store: RelayStore,
                       subs: SubOperations) -> None:
        """One instance of the upstream's to the requester, unless it cancelled (then it is
        one not done: remaining)."""
        if exchange.cancelled():
            (self.spool.relay / Path(store.file_name).name).unlink(missing_ok=True)
            return
        subs.delivered(self._send_sub_operation(exchange, store))

    def _send_sub_operation(self, exchange: Exchange, store: RelayStore) -> int | None:
        path = self.spool.relay / Path(store.file_name).name
        try:
            return exchange.link.store(path, _sub_message_id(exchange))
        except (ValueError, RuntimeError, OSError) as exc:
            log.warning("C-GET sub-operation (SOP class %s) not sent to the requester: %s",
                        store.sop_class_uid, exc)
            return None
        finally:
            path.unlink(missing_ok=True)

    # --- C-MOVE in relay mode (router/relay/move.py): instances the upstream sends ---------

    def take_move_instance(self, originator_message_id: int | None,
                           originator_ae: str | None, calling_ae: str, source: Path) -> bool:
        """From the C-STORE handler: an instance of a relayed C-MOVE goes to its move (the
        file meta says what it is); one of a move that ended is refused (MoveClosed)."""
        return self.moves.take_instance(originator_message_id, originator_ae, calling_ae,
                                        source, self.config)

    def move_instance_arriving(self, originator_message_id: int | None,
                               originator_ae: str | None, calling_ae: str
                               ) -> ArrivingInstance | None:
        """From the C-STORE intake as a dataset starts to arrive: an instance of a relayed
        C-MOVE in progress, whose data keeps the move's wait on its upstream alive."""
        return self.moves.moves.arriving(originator_message_id, originator_ae, calling_ae)

    def awaits_move_instances(self, calling_ae: str) -> bool:
        """Whether a relayed C-MOVE in progress takes instances from this calling AE."""
        return self.moves.moves.awaits(calling_ae)


def _counts(answer: RelayResponse) -> Counts | None:
    if answer.completed < 0 and answer.remaining < 0:
        return None
    return Counts(max(answer.remaining, 0), max(answer.completed, 0), max(answer.failed, 0),
                  max(answer.warning, 0))


def _next(call: RelayCall, exchange: Exchange) -> tuple[Any, bytes | None]:
    """The call's next answer; RequesterGone once the requester is (the call's close then
    cancels the request upstream)."""
    while True:
        if exchange.gone():
            gone = RequesterGone("its association ended")
            gone.unheard = not call.heard
            raise gone
        answer = call.poll(exchange.cancelled)
        if answer is not None:
            if isinstance(answer[0], RelayResponse):
                exchange.heard(answer[0])
            return answer


def _sub_message_id(exchange: Exchange) -> int:
    exchange.sub_operations += 1
    return int((exchange.msg.MessageID + exchange.sub_operations) % 65535) or 1
