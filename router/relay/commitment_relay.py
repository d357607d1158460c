"""Part of the relay server: storage commitment (Push Model) through the router.

The N-ACTION is remembered before it is relayed (its result may come before its answer),
held by the broker while its instances are still queued for the upstream
(commitment_hold.py), and relayed; the upstream's N-EVENT-REPORT is checked against the
upstreams the N-ACTION went to and handed to the requester on a new association, or kept on
the spool and sent again (commitment_results.py, result_courier.py). README "Storage
commitment".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from router.core import metrics
from router.core.config import RouterConfig
from router.core.dimse_status import Status, is_warning
from router.core.errors import DimseRefusal
from router.core.messages import RelayRequest
from router.dicom.uid_tables import IMPLICIT_VR_LE
from router.relay.commitment_hold import commitment_hold
from router.relay.commitment_request import Unreadable, transaction_uid
from router.relay.commitment_results import KeptResults, kept_result
from router.relay.exchange import Exchange, RequesterGone
from router.relay.result_courier import FIRST_TRY_SECONDS, Attempt, ResultCourier
from router.relay.state import Commitment, Commitments, upstream_titles

log = logging.getLogger("router.relay.server")  # the name these messages always had

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"


class TransactionTaken(DimseRefusal):
    """A storage commitment request whose Transaction UID another requester's pending
    commitment has (PS3.4 J.3.2: a Transaction UID is unique to its request)."""


class CommitmentRelay:
    """Part of the RelayServer: its storage commitment requests and results."""

    config: RouterConfig
    commitments: Commitments
    results: KeptResults
    courier: ResultCourier
    _pass_through: Callable[[Exchange, RelayRequest], int | None]
    _request: Callable[..., RelayRequest]

    def _remember_commitment(self, exchange: Exchange, requester_ae: str) -> str | None:
        """Remembered before it is relayed: the upstream's result may come before its
        N-ACTION-RSP. The Transaction UID, None when there is none."""
        try:
            transaction = _transaction_uid(exchange)
        except Unreadable as exc:
            log.warning("storage commitment request without a readable Transaction UID: %s",
                        exc)
            return None
        pending = self.commitments.peek(transaction)
        if pending is not None and pending.requester_ae.strip() != requester_ae.strip():
            # Another requester's pending commitment: taking it over would send its result
            # here, and a refusal of this one would forget it. Its own retry may go on.
            log.warning("storage commitment request from %s names Transaction UID %s, which "
                        "%s's pending commitment has: refused", requester_ae.strip(),
                        transaction, pending.requester_ae.strip())
            raise TransactionTaken(f"Transaction UID {transaction} is pending for another "
                                   "requester; use a new one")
        # Each upstream the rule may relay it to: its result may come before the N-ACTION-RSP
        # says which one took it.
        upstreams = upstream_titles(self.config, exchange.upstreams)
        self.commitments.remember(transaction, requester_ae, upstreams)
        return transaction

    def _relay_commitment(self, exchange: Exchange, request: RelayRequest,
                          transaction: str | None) -> None:
        """A storage commitment request: one the upstream refused (or never got) has no
        result to wait for. One it did not answer in time stays pending: the upstream may
        have taken it and send its result later (bounded by COMMITMENT_MEMORY_SECONDS)."""
        held = self._held(exchange, request, transaction)
        try:
            status = self._pass_through(exchange, held)
        except RequesterGone as gone:
            if transaction is not None and held.hold_seconds > 0 and gone.unheard:
                # Still held by the broker, which drops it on the cancel: it reaches no
                # upstream, so no result will come (a progress word in flight the very moment
                # it went would let a result come: refused as unknown, to a requester that
                # never had its N-ACTION-RSP and asks again).
                self.commitments.take(transaction)
                log.info("storage commitment %s not pending: its requester went away while "
                         "it was held, before it was relayed", transaction)
            raise
        if transaction is None:
            return
        if status is None:
            log.info("storage commitment %s stays pending: the upstream's answer to its "
                     "N-ACTION did not come (a timeout, an abort, a router process gone), its "
                     "result may still come", transaction)
        elif status != Status.SUCCESS and not is_warning(status):
            self.commitments.take(transaction)
            log.info("storage commitment %s not pending: the N-ACTION failed (0x%04X)",
                     transaction, status)

    def _held(self, exchange: Exchange, request: RelayRequest, transaction: str | None
              ) -> RelayRequest:
        """The request with what the broker is to wait for before relaying it: its
        instances still queued for the upstream (router/relay/commitment_hold.py)."""
        dataset = exchange.request_dataset()
        if dataset is None:  # nothing to wait for: the upstream answers for it, as before
            return request
        implicit = exchange.transfer_syntax == IMPLICIT_VR_LE
        hold = commitment_hold(self.config, request.upstreams, dataset, implicit)
        if hold.seconds <= 0:
            return request
        return dataclasses.replace(request, hold_seconds=hold.seconds,
                                   hold_destinations=hold.destinations,
                                   hold_instances=hold.instances,
                                   transaction_uid=transaction or "")

    def _commitment_result(self, exchange: Exchange) -> bool:
        """An upstream's N-EVENT-REPORT with a commitment result: on to the requester (a known
        AE) on a new association; the upstream gets the requester's answer."""
        try:
            transaction = _transaction_uid(exchange)
        except Unreadable:
            return False
        pending = self.commitments.peek(transaction)
        if pending is not None and not pending.reported_by(exchange.link.facts.calling_ae,
                                                           self.config):
            self._refuse_result(exchange, transaction, pending)
            return True
        commitment = self.commitments.take(transaction)
        if commitment is None:
            return self._later_report(exchange, transaction, None)
        requester = commitment.requester_ae
        if requester not in self.config.known_aes:
            log.error("storage commitment result for %s cannot be delivered: add it to "
                      "known_aes (host and port where it takes N-EVENT-REPORT)", requester)
            self.commitments.restore(transaction, commitment)  # a reload may add it
            exchange.final(Status.PROCESSING_FAILURE, f"requester {requester} not in known_aes")
            return True
        if self._later_report(exchange, transaction, commitment):
            return True
        request = self._request(exchange, STORAGE_COMMITMENT, [requester],
                                exchange.link.facts, to_known_ae=True)
        payload = exchange.request_dataset() or b""
        attempt = self.courier.start(request, payload)
        outcome = attempt.wait(FIRST_TRY_SECONDS)
        if outcome is None:  # the requester is slow or gone: the upstream must not wait
            self._keep_result(exchange, request, transaction, commitment, payload,
                              f"no answer within {FIRST_TRY_SECONDS:.0f}s", attempt)
            return True
        attempt.close()
        answer, data, reason = outcome
        if answer is None:
            self._keep_result(exchange, request, transaction, commitment, payload, reason)
            return True
        exchange.respond(answer.status, dataset=data, comment=answer.error_comment,
                         answer=answer)
        metrics.DIMSE_REQUESTS.labels(exchange.command, f"0x{answer.status:04X}").inc()
        if answer.status != Status.SUCCESS:
            # The requester refused it: the upstream hears so and may send it again.
            self.commitments.restore(transaction, commitment)
        return True

    def _later_report(self, exchange: Exchange, transaction: str,
                      commitment: Commitment | None) -> bool:
        """A report for a transaction whose earlier result is still kept (the archive reports
        again, or the requester asked again): it takes the earlier's place, so that the
        requester hears the latest and never the earlier after it. Without a pending
        commitment, only the AE that reported the earlier may. False: no such result."""
        earlier = self.results.peek(transaction)
        facts = exchange.link.facts
        if earlier is None or (commitment is None and
                               facts.calling_ae.strip() != earlier.calling_ae.strip()):
            return False
        requester = commitment.requester_ae if commitment is not None else earlier.requester_ae
        request = self._request(exchange, STORAGE_COMMITMENT, [requester], facts,
                                to_known_ae=True)
        later = kept_result(request, transaction, requester, exchange.request_dataset() or b"",
                            time.time(), "")
        # Not tried yet: the courier sends it at its next look (once the earlier's first try,
        # if one still waits, has ended).
        self.results.keep(dataclasses.replace(later, attempts=0, next_at=later.kept_at))
        log.warning("storage commitment result %s from %s for %s replaces the one kept for it "
                    "and not delivered yet: kept on the spool, sent until %s takes it",
                    transaction, facts.calling_ae, requester, requester)
        exchange.final(Status.SUCCESS, "")
        return True

    @staticmethod
    def _refuse_result(exchange: Exchange, transaction: str, pending: Commitment) -> None:
        """A result from an AE its N-ACTION never went to: forged or misdirected, and a
        requester told "all committed" may delete its only copy. It stays pending for the
        upstream's own."""
        facts = exchange.link.facts
        log.warning("storage commitment result %s from %s at %s refused: its N-ACTION went "
                    "to %s; still pending for them (a PACS reporting under another AE title: "
                    "add it to the destination's store_ae_titles)", transaction,
                    facts.calling_ae, facts.source, pending.upstream_names())
        exchange.final(Status.PROCESSING_FAILURE,
                       "not from the upstream of this storage commitment")

    def _keep_result(self, exchange: Exchange, request: RelayRequest, transaction: str,
                     commitment: Commitment, payload: bytes, reason: str,
                     first_try: Attempt | None = None) -> None:
        """The requester did not take its result: the router keeps it and sends it again
        (most upstreams report once), and the upstream hears Success, as for a C-STORE.
        A first try still waiting goes on; the kept copy waits for its end."""
        requester = commitment.requester_ae
        now = time.time()
        until = now + first_try.seconds_left() + 1.0 if first_try is not None else 0.0
        kept = kept_result(request, transaction, requester, payload, now, reason, until)
        try:
            stored = self.results.keep(kept)
        except BaseException:  # a full disk: the upstream hears a failure, nothing waits
            if first_try is not None:
                first_try.close()
            # Pending again for the upstream's retry, which take() would refuse as unknown.
            self.commitments.restore(transaction, commitment)
            raise
        if not stored:  # a Transaction UID that cannot be a file name
            if first_try is not None:
                first_try.close()
            self.commitments.restore(transaction, commitment)
            log.warning("storage commitment result for %s not delivered: %s", requester, reason)
            exchange.final(Status.PROCESSING_FAILURE, reason)
            return
        waits = ""
        if first_try is not None:
            waits = f"; its first try waits up to {first_try.seconds_left():.0f}s more"
            self.courier.finish_first_try(first_try, kept)
        log.warning("storage commitment result %s for %s not delivered (%s): kept on the "
                    "spool, sent again until %s takes it%s", transaction, requester, reason,
                    requester, waits)
        exchange.final(Status.SUCCESS, "")


def _transaction_uid(exchange: Exchange) -> str:
    """The request's Transaction UID, read from its bytes up to it (commitment_request.py:
    decoding the whole dataset built every item of its sequences); Unreadable when there is
    none."""
    dataset = exchange.request_dataset()
    if dataset is None:
        raise Unreadable("no dataset")
    transaction = transaction_uid(dataset, exchange.transfer_syntax == IMPLICIT_VR_LE)
    if not transaction:
        raise Unreadable("no Transaction UID")
    return transaction
