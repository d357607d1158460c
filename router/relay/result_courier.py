"""Storage commitment results on to their requester (a known AE, on a new association):
the one try as the upstream reports, then, for a result kept because its requester did not
take it (commitment_results.py), again and again until it does. A result is kept while its
first try still waits for a slow requester: that try, when it ends, says so in the kept
file (taken: the file goes), and until then the courier leaves the file alone."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import zmq

from router.core.config import RouterConfig
from router.core.dimse_status import Status
from router.core.messages import RelayRequest, RelayResponse
from router.core.owned_names import relay_request_id
from router.relay.call import POLL_SECONDS, RelayCall, RelayTimeout, RouterStopping
from router.relay.commitment_results import KeptResult, KeptResults

log = logging.getLogger(__name__)

RETRY_POLL_SECONDS = 1.0  # how often kept results are looked at
# The first try, while the upstream waits for our answer to its report: Orthanc gives up
# after 10 s (its DicomScuTimeout) and marks its job failed. A requester silent this long
# has its result kept, and the upstream hears Success in time; the first try goes on up to
# request_timeout, and the kept copy is sent again only if the requester did not take it.
FIRST_TRY_SECONDS = 5.0


Outcome = tuple[RelayResponse | None, bytes | None, str]  # the requester's answer, or why none


class Attempt:
    """One N-EVENT-REPORT on its way to the requester, waited for in steps: the first try
    answers the upstream after FIRST_TRY_SECONDS and waits for the rest on a thread."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str,
                 request: RelayRequest, payload: bytes, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.outcome: Outcome | None = None
        self.call: RelayCall | None = None
        try:
            self.call = RelayCall(context, endpoint, request, payload, timeout)
        except RouterStopping as exc:
            self.outcome = None, None, str(exc)

    def wait(self, seconds: float) -> Outcome | None:
        """The outcome once known; None while it is not, after `seconds`. Bounded by the
        deadline itself: a broker answering the call's probes would keep it alive."""
        until = min(self.deadline, time.monotonic() + seconds)
        while self.outcome is None and self.call is not None:
            now = time.monotonic()
            if now >= self.deadline:
                self.outcome = None, None, f"no answer within {self.timeout:.0f}s"
            elif now >= until:
                return None
            else:
                self.outcome = self._poll(self.call, min(until - now, POLL_SECONDS))
        return self.outcome

    @staticmethod
    def _poll(call: RelayCall, wait: float) -> Outcome | None:
        try:
            got = call.poll(lambda: False, wait)
        except (RelayTimeout, RouterStopping) as exc:
            return None, None, str(exc)
        if got is None:
            return None
        answer, data = got
        if not isinstance(answer, RelayResponse) or not answer.final:
            return None
        if not answer.upstream or answer.unanswered:  # the worker's, not the requester's
            return None, None, answer.error_comment or "no answer"
        return answer, data, ""

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def close(self) -> None:
        if self.call is not None:
            self.call.close()


class ResultCourier:
    def __init__(self, config: Callable[[], RouterConfig],
                 context: zmq.Context[zmq.Socket[bytes]], endpoint: str,
                 results: KeptResults) -> None:
        self.config = config  # the relay server's, as the last reload left it
        self.context = context
        self.endpoint = endpoint
        self.results = results

    def start(self, request: RelayRequest, payload: bytes) -> Attempt:
        """An attempt to hand a result to its requester, waited for up to request_timeout."""
        return Attempt(self.context, self.endpoint, request, payload,
                       self.config().request_timeout)

    def deliver(self, request: RelayRequest, payload: bytes) -> Outcome:
        """One attempt, to its end: the requester's answer, or None and why it did not
        answer (not reached, silent, the router's timeout)."""
        attempt = self.start(request, payload)
        try:
            outcome = attempt.wait(attempt.timeout)
        finally:
            attempt.close()
        return outcome or (None, None, "no answer")

    def finish_first_try(self, attempt: Attempt, kept: KeptResult) -> None:
        """The first try of a result kept while it went on: wait for it on a thread of its
        own, and end it in the kept file, so that the courier does not send it again when
        the requester was slow, not gone."""
        threading.Thread(target=self._finish, args=(attempt, kept), daemon=True,
                         name="commit-first-try").start()

    def _finish(self, attempt: Attempt, kept: KeptResult) -> None:
        uid, requester = kept.transaction_uid, kept.requester_ae
        try:
            answer, _, reason = attempt.wait(attempt.timeout) or (None, None, "no answer")
        finally:
            attempt.close()
        taken = answer is not None and answer.status == Status.SUCCESS
        if taken:
            log.info("storage commitment result %s delivered to %s on its first try, after "
                     "it was kept", uid, requester)
        else:
            if answer is not None:
                reason = f"{requester} answered 0x{answer.status:04X} " \
                         f"{answer.error_comment}".strip()
            log.info("storage commitment result %s for %s not delivered on its first try: "
                     "%s; sent again", uid, requester, reason)
        try:
            self.results.first_try_ended(kept, taken, time.time(), reason)
        except Exception as exc:  # a full disk: the courier sends it after first_try_until
            log.error("storage commitment result %s: the end of its first try not recorded "
                      "(%s: %s); sent again once the try's time is up", uid,
                      type(exc).__name__, exc)

    def retry_forever(self, stop: threading.Event) -> None:
        """The acceptor's thread for kept results (each acceptor runs one; a result's lease,
        taken under its lock, lets one of them send it at a time)."""
        while not stop.wait(RETRY_POLL_SECONDS):
            try:
                self.retry_due()
            except Exception as exc:  # keep retrying: a full disk passes
                log.error("retrying storage commitment results failed: %s: %s",
                          type(exc).__name__, exc)

    def retry_due(self) -> None:
        """Each due result, one at a time: leased under its lock, sent without it (a later
        report for it is kept meanwhile, not held up by the send). A requester that did not
        take one is not tried again in the same pass: each try of a silent one lasts up to
        request_timeout, and its twenty results held every other requester's back twenty
        times that."""
        untaken: set[str] = set()
        while (leased := self._lease_next(untaken)) is not None:
            if not self._send(leased):
                untaken.add(leased.requester_ae)

    def _lease_next(self, skip: set[str]) -> KeptResult | None:
        """The next due result to send, leased; `skip`: requesters not tried again in this
        pass (their results stay due for the next)."""
        now = time.time()
        with contextlib.closing(self.results.due(now)) as due:
            for result in due:
                uid, requester = result.transaction_uid, result.requester_ae
                if requester in skip and not result.expired(now):
                    continue
                if result.expired(now):
                    log.error("storage commitment result %s for %s given up: not delivered "
                              "in %d attempt(s) over 24 h (last: %s)", uid, requester,
                              result.attempts, result.reason)
                    self.results.give_up(result)
                elif requester not in self.config().known_aes:  # a reload may add it back
                    self.results.retry_later(result.failed(now, "not in known_aes"))
                else:
                    return self.results.lease(result,
                                              now + self.config().request_timeout + 1.0)
        return None

    def _send(self, leased: KeptResult) -> bool:
        """Whether the requester took it."""
        uid, requester = leased.transaction_uid, leased.requester_ae
        answer, _, reason = self.deliver(leased.request(relay_request_id()), leased.payload())
        taken = answer is not None and answer.status == Status.SUCCESS
        if taken:
            log.info("storage commitment result %s delivered to %s on attempt %d", uid,
                     requester, leased.attempts + 1)
        else:
            if answer is not None:
                reason = f"{requester} answered 0x{answer.status:04X} " \
                         f"{answer.error_comment}".strip()
            log.info("storage commitment result %s for %s not delivered yet: %s", uid,
                     requester, reason)
        self.results.sent(leased, taken, time.time(), reason)
        return taken

