"""Storage commitment results on to their requester (a known AE, on a new association):
the one try as the upstream reports, then, for a result kept because its requester did not
take it (commitment_results.py), again and again until it does."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq

from router.core.config import RouterConfig
from router.core.dimse_status import Status
from router.core.messages import RelayRequest, RelayResponse
from router.core.owned_names import relay_request_id
from router.relay.call import RelayCall, RelayTimeout, RouterStopping
from router.relay.commitment_results import KeptResult, KeptResults

log = logging.getLogger(__name__)

RETRY_POLL_SECONDS = 1.0  # how often kept results are looked at
# The first try, while the upstream waits for our answer to its report: Orthanc gives up
# after 10 s (its DicomScuTimeout) and marks its job failed. A requester silent this long
# has its result kept and sent again; the upstream hears Success in time.
FIRST_TRY_SECONDS = 5.0


class ResultCourier:
    def __init__(self, config: Callable[[], RouterConfig],
                 context: zmq.Context[zmq.Socket[bytes]], endpoint: str,
                 results: KeptResults) -> None:
        self.config = config  # the relay server's, as the last reload left it
        self.context = context
        self.endpoint = endpoint
        self.results = results

    def deliver(self, request: RelayRequest, payload: bytes, wait: float | None = None
                ) -> tuple[RelayResponse | None, bytes | None, str]:
        """One attempt to hand a result to its requester: the requester's answer, or None
        and why it did not answer (not reached, silent, the router's timeout). `wait`: at
        most this long, if less than request_timeout."""
        timeout = self.config().request_timeout
        try:
            call = RelayCall(self.context, self.endpoint, request, payload,
                             timeout if wait is None else min(wait, timeout))
        except RouterStopping as exc:
            return None, None, str(exc)
        try:
            while True:
                got = call.poll(lambda: False)
                if got is None:
                    continue
                answer, data = got
                if not isinstance(answer, RelayResponse) or not answer.final:
                    continue
                if not answer.upstream or answer.unanswered:  # the worker's, not the requester's
                    return None, None, answer.error_comment or "no answer"
                return answer, data, ""
        except (RelayTimeout, RouterStopping) as exc:
            return None, None, str(exc)
        finally:
            call.close()

    def retry_forever(self, stop: threading.Event) -> None:
        """The acceptor's thread for kept results (each acceptor runs one; a result's lock
        lets one of them send it at a time)."""
        while not stop.wait(RETRY_POLL_SECONDS):
            try:
                self.retry_due()
            except Exception as exc:  # keep retrying: a full disk passes
                log.error("retrying storage commitment results failed: %s: %s",
                          type(exc).__name__, exc)

    def retry_due(self) -> None:
        for result in self.results.due(time.time()):
            self._retry(result)

    def _retry(self, result: KeptResult) -> None:
        uid, requester = result.transaction_uid, result.requester_ae
        if result.expired(time.time()):
            log.error("storage commitment result %s for %s given up: not delivered in %d "
                      "attempt(s) over 24 h (last: %s)", uid, requester, result.attempts,
                      result.reason)
            self.results.give_up(result)
            return
        if requester not in self.config().known_aes:  # removed by a reload: one may add it back
            self.results.retry_later(result.failed(time.time(), "not in known_aes"))
            return
        answer, _, reason = self.deliver(result.request(relay_request_id()), result.payload())
        if answer is not None and answer.status == Status.SUCCESS:
            log.info("storage commitment result %s delivered to %s on attempt %d", uid,
                     requester, result.attempts + 1)
            self.results.delivered(result)
            return
        if answer is not None:
            reason = f"{requester} answered 0x{answer.status:04X} {answer.error_comment}".strip()
        log.info("storage commitment result %s for %s not delivered yet: %s", uid, requester,
                 reason)
        self.results.retry_later(result.failed(time.time(), reason))

