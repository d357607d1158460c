"""The broker process: owns the queue. Acceptors submit jobs; workers take deliveries.

Both sides are ROUTER sockets with ROUTER_MANDATORY set, so a message to a peer that is gone
raises instead of vanishing silently.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import zmq

from router.audit.forwarded import ForwardTally
from router.audit.trail import AuditTrail
from router.broker.commitment_holds import CommitmentHolds
from router.broker.control import OperatorControl
from router.broker.dead_letter_tally import DeadLetterTally
from router.broker.dead_letter_writing import DeadLetterWriting
from router.broker.deliveries import DeadLetter, Outcome, Retry, Settled
from router.broker.dispatch import Dispatcher
from router.broker.orphans import OrphanedJournals
from router.broker.policies import dicom_names, holds, policies
from router.broker.publish import Publishing
from router.broker.reaper import SpoolReaper
from router.broker.recovery import Recovery, recover_jobs
from router.broker.relay_paths import RelayPaths
from router.broker.relay_routes import RelayRoutes
from router.broker.unwritten_dead_letters import UnwrittenDeadLetters
from router.core import metrics
from router.core import reload as reload_config
from router.core.config import RouterConfig
from router.core.errors import CompletionShareFull, ProtocolError, RouterError
from router.core.failures import DESTINATION_FAILURES, SPOOL_FAILURES
from router.core.messages import (
    RELAY_TYPES,
    Accepted,
    BatchResult,
    Control,
    Deliver,
    Goodbye,
    Heartbeat,
    Message,
    Ready,
    Refused,
    Result,
    Submit,
    decode,
    encode,
)
from router.core.process_util import (
    SignalWakeup,
    install_stop_handlers,
    setup_logging,
    watch_parent,
)
from router.core.runtime import Runtime
from router.core.spool import Spool
from router.core.zmq_drain import waiting

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0


class Broker(Publishing, RelayPaths, DeadLetterWriting):
    def __init__(self, config: RouterConfig, runtime: Runtime, spool: Spool) -> None:
        self.spool = spool
        self.dead_letter_tally = DeadLetterTally(spool.dead_letters)
        spool.recycler.keep_free = config.spool.watermark_bytes
        self.reaper = SpoolReaper(spool)
        self.unwritten = UnwrittenDeadLetters()
        self.unwritten_shown: set[str] = set()  # router/broker/publish.py
        self.orphans = OrphanedJournals(spool)
        self.runtime = runtime
        self.dispatcher = Dispatcher(policies(config), config.queue.max_jobs,
                                     config.queue.max_bytes, holds=holds(config),
                                     linger=config.queue.linger)
        self.associating = dicom_names(config)  # destinations with associations to show
        self.control = OperatorControl(self.dispatcher, spool, config)
        self.reload_requested = False  # set by SIGHUP, applied by the loop
        self.writing_dead_letters = False  # those a start made, batch by batch
        self.relays = RelayRoutes()
        self.commitment_holds = CommitmentHolds()  # router/broker/commitment_holds.py
        self.config_generation = 0
        self.context = zmq.Context()
        self.frontend = self._bind(runtime.frontend)
        self.backend = self._bind(runtime.backend)
        self.next_heartbeat = 0.0
        self.status_dir: Path | None = runtime.status_dir if runtime.status_dir.is_dir() else None
        # Dead letters, audited per destination and study (docs/audit.md); workers audit
        # what the destinations took.
        self.audit = AuditTrail(config.audit, config.ae_title) if config.audit.enabled \
            else None
        self.forwarded = ForwardTally(config) if self.audit is not None else None

    def _bind(self, endpoint: str) -> zmq.Socket[bytes]:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        return sock

    def take_replays(self) -> None:
        """Queue the dead letters an operator replayed (`dicom-router dead-letters replay`)."""
        for header in self.spool.take_replays():
            self._apply(self.dispatcher.add_job(header, exclusive=False))
            log.info("replaying job %s to %s", header.job_id, ", ".join(header.destinations))

    def recover(self) -> Recovery:
        """Queue every job left on the spool by an earlier run (or an earlier broker)."""
        self.take_replays()
        recovery = recover_jobs(self.spool, self.dispatcher, self._defer_dead_letters)
        self.writing_dead_letters = bool(self.unwritten.letters)
        if recovery.jobs:
            metrics.RECOVERED_JOBS.inc(recovery.jobs)
            log.info("%s", recovery)
        self.orphans.start()
        return recovery

    # --- message handling -------------------------------------------------------------------

    def on_frontend(self, identity: bytes, message: Message) -> None:
        if isinstance(message, Control):  # an operator's action (router/broker/control.py)
            answer, outcomes = self.control.handle(message, time.monotonic())
            self._apply(outcomes)
            self.dead_letter_tally.stale()  # a replay or purge may have removed letters
            self._publish(time.monotonic())  # /status shows the new state once answered
            self._send(self.frontend, identity, answer)
            return
        if not isinstance(message, Submit):
            raise ProtocolError(f"acceptor sent an unexpected {message.kind}")
        job = message.job
        reason = None if job.job_id in self.dispatcher.jobs else self.dispatcher.refusal(job)
        if reason is not None:
            # Apart from queue_full: the queue still takes everything a completion rule
            # does not hold (an alert on queue_full would page for a held study).
            share = reason.startswith(CompletionShareFull.PREFIX)
            metrics.REFUSALS.labels("completion_share" if share else "queue_full").inc()
            reply: Message = Refused(job.job_id, reason)
        else:
            self._apply(self.dispatcher.add_job(job))
            reply = Accepted(job.job_id)
        self._send(self.frontend, identity, reply)

    def on_backend(self, identity: bytes, message: Message, now: float) -> None:
        if isinstance(message, Ready):
            self.dispatcher.worker_ready(identity, message.credits, now)
            log.info("worker %s ready with %d credits", identity.decode(errors="replace"),
                     message.credits)
            # Once per connection: /readyz and a reload waiting for this worker see it now,
            # not a heartbeat later.
            self._publish(now)
        elif isinstance(message, Result):
            self._apply(self.dispatcher.result(identity, message, now))
            metrics.labelled(metrics.FORWARDED, message.destination,
                             _outcome_label(message)).inc()
        elif isinstance(message, BatchResult):
            self._apply(self.dispatcher.batch_result(identity, message.destination,
                                                     message.results, now, message.lease))
            for result in message.results:
                metrics.labelled(metrics.FORWARDED, message.destination,
                                 _outcome_label(result)).inc()
        elif isinstance(message, Heartbeat):
            if not self.dispatcher.worker_seen(identity, now):
                # A worker we forgot (we restarted, or its lease expired): it must say Ready.
                self._send(self.backend, identity, Goodbye())
        elif isinstance(message, Goodbye):
            self._worker_gone(identity, "said goodbye")
        else:
            raise ProtocolError(f"worker sent an unexpected {message.kind}")

    def _worker_gone(self, identity: bytes, why: str) -> None:
        for acceptor, answer in self.relays.worker_gone(identity):
            self._send(self.frontend, acceptor, answer)
        requeued = self.dispatcher.worker_gone(identity)
        metrics.LEASES_EXPIRED.inc(requeued)
        log.info("worker %s %s; %d deliveries requeued", identity.decode(errors="replace"),
                 why, requeued)

    def _apply(self, outcomes: list[Outcome]) -> None:
        for name, down, failures in self.dispatcher.recoveries:
            log.info("destination %s is back after %.0fs unavailable (%d failed tries)",
                     name, down, failures)
        self.dispatcher.recoveries.clear()
        for outcome in outcomes:
            if isinstance(outcome, Settled):
                if self.unwritten.hold(outcome):  # a dead letter waits: the job stays
                    continue
                self.reaper.remove(outcome.job, reuse=outcome.reusable)
            elif isinstance(outcome, Retry):
                d = outcome.delivery
                metrics.RETRIES.labels(d.destination, outcome.reason).inc()
                if outcome.reason == "busy":
                    log.info("destination %s is busy; %d job(s) wait for an association",
                             d.destination, d.size)
                elif outcome.reason in SPOOL_FAILURES:
                    log.debug("job %s to %s waits %.1fs for the spool (%s)", d.job.job_id,
                              d.destination, outcome.delay, outcome.detail)
                elif outcome.reason in DESTINATION_FAILURES:
                    if outcome.announce:  # once per outage, not per probe or delivery in it
                        log.warning("destination %s unavailable (%s); its queue waits %.1fs, "
                                    "then probes with back-off (logged again when it is back "
                                    "or fails another way)",
                                    d.destination, _said(outcome), outcome.delay)
                else:
                    log.warning("delivery of job %s to %s failed (%s); attempt %d in %.1fs",
                                d.job.job_id, d.destination, outcome.reason, d.attempt,
                                outcome.delay)
            elif isinstance(outcome, DeadLetter) and not self._dead_letter(outcome):
                self.unwritten.add(outcome)

    # --- I/O --------------------------------------------------------------------------------

    def _send(self, sock: zmq.Socket[bytes], identity: bytes, message: Message,
              payload: list[bytes] | None = None) -> bool:
        try:
            sock.send_multipart([identity, encode(message), *(payload or [])])
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False

    def _dispatch(self, now: float) -> None:
        for identity, delivery in self.dispatcher.dispatch(now):
            message = Deliver(delivery.job, delivery.destination, delivery.attempt,
                              list(delivery.batch), delivery.others_open, delivery.lease)
            if not self._send(self.backend, identity, message):
                self._worker_gone(identity, "is unreachable")
        self._log_limit_changes()

    def _log_limit_changes(self) -> None:
        for name, old, new, why in self.dispatcher.limit_changes:
            if name not in self.associating:
                continue
            metrics.DESTINATION_CONCURRENCY.labels(name).set(new)
            if why == "busy":
                log.warning("destination %s is busy (refused one more association): it now "
                            "gets %d association(s) at a time (was %d)", name, new, old)
            else:
                log.info("destination %s: trying %d associations at a time (was %d)",
                         name, new, old)
        self.dispatcher.limit_changes.clear()

    def reload(self) -> None:
        """Apply the config the supervisor validated (router/core/reload.py)."""
        self.reload_requested = False
        try:
            config = reload_config.load(self.runtime.directory)
        except (OSError, RouterError, KeyError, ValueError) as exc:
            log.error("cannot read the reloaded config; keeping the current one: %s", exc)
            return
        if config is not None and config[0] != self.config_generation:
            self.config_generation, new = config
            setup_logging(new.log_level, new.log_format)
            self.dispatcher.reconfigure(policies(new), new.queue.max_jobs, new.queue.max_bytes,
                                        holds(new), new.queue.linger)
            self.associating = dicom_names(new)
            if self.forwarded is not None:
                self.forwarded.set_config(new)
            self.spool.recycler.keep_free = new.spool.watermark_bytes
            self._apply(self.control.reconfigure(new))  # a removed queue: dead letters
            log.info("applied the reloaded config: %d destinations", len(new.destinations))
        self._publish(time.monotonic())  # the supervisor waits for this generation

    def _housekeeping(self, now: float) -> None:
        if self.reload_requested:
            self.reload()
        if self.writing_dead_letters:
            self._write_deferred_dead_letters()
        for identity in self.dispatcher.expired_workers(now):
            self._worker_gone(identity, "missed its heartbeats; lease expired")
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + HEARTBEAT_SECONDS
            self.take_replays()
            if not self.writing_dead_letters:  # else written batch by batch above
                self._apply(self.unwritten.retry(lambda letter: self._dead_letter(letter, True)))
            for job in self.orphans.collect(lambda job_id: job_id not in self.dispatcher.jobs
                                            and not self.reaper.removing(job_id)):
                self._apply(self.dispatcher.add_job(job.header, job.delivered, exclusive=False))
            self._apply(self.control.tick(now))
            self.cancel_for_dead_acceptors()
            if self.forwarded is not None and self.audit is not None \
                    and self.forwarded.due(now):
                self.forwarded.flush(self.audit)
            for identity in list(self.dispatcher.workers):
                if not self._send(self.backend, identity, Heartbeat()):
                    self._worker_gone(identity, "is unreachable")
            self._publish(now)

    def _receive(self, sock: zmq.Socket[bytes], now: float) -> None:
        # Drain what is waiting, bounded so one side cannot starve the other.
        for frames in waiting(sock, 256):
            try:
                identity, frame, *payload = frames
            except ValueError:
                log.error("dropped a malformed multipart message from a router process")
                continue
            try:
                message = decode(frame)
                if isinstance(message, RELAY_TYPES):
                    self.on_relay(sock, identity, message, payload)
                elif sock is self.frontend:
                    self.on_frontend(identity, message)
                else:
                    self.on_backend(identity, message, now)
            except ProtocolError as exc:
                log.error("ignored a bad message from %r: %s", identity, exc)

    def run(self, stop: threading.Event, wakeup: SignalWakeup | None = None) -> None:
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        if wakeup is not None:
            poller.register(wakeup, zmq.POLLIN)
        while not stop.is_set():
            now = time.monotonic()
            due = self.dispatcher.next_due(now)
            if self.commitment_holds.held:  # a held commitment's bound wakes the loop too
                bound = self.commitment_holds.next_due()
                due = bound if due is None or (bound is not None and bound < due) else due
            timeout = min(HEARTBEAT_SECONDS, max(0.0, due - now) if due else HEARTBEAT_SECONDS)
            if self.writing_dead_letters:
                timeout = 0.0
            ready = dict(poller.poll(int(timeout * 1000) + 1))
            if wakeup is not None:
                wakeup.drain_if_ready(ready)
            now = time.monotonic()
            # Acceptors first: a sender waits for each submit's answer, a worker for nothing.
            if self.frontend in ready:
                self._receive(self.frontend, now)
            if self.backend in ready:
                self._receive(self.backend, now)
            self._dispatch(now)
            self.release_commitments(now)
            self._housekeeping(now)

    def close(self) -> None:
        if self.forwarded is not None and self.audit is not None:
            self.forwarded.flush(self.audit)
            self.audit.close()
        self.reaper.close()
        self.frontend.close()
        self.backend.close()
        self.context.term()


def _said(retry: Retry) -> str:
    return f"{retry.reason}: {retry.detail}" if retry.detail else retry.reason


def _outcome_label(result: Result) -> str:
    """delivered, suppressed (the ledger said the destination has it: not sent), busy (the
    destination took no more associations: no attempt spent), failed."""
    if not result.delivered:
        return "busy" if result.reason == "busy" else "failed"
    return "suppressed" if result.reason in ("redelivery", "duplicate") else "delivered"


def main(config: RouterConfig, runtime: Runtime) -> None:
    """Entry point of the spawned broker process."""
    setup_logging(config.log_level, config.log_format)
    stop = threading.Event()
    install_stop_handlers(stop)
    wakeup = SignalWakeup()
    watch_parent(stop)
    spool = Spool(config.spool.path).create()
    broker = Broker(config, runtime, spool)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        broker.reload_requested = True

    signal.signal(signal.SIGHUP, on_hup)
    recovery = broker.recover()
    log.info("broker ready: %d destinations; %s", len(config.destinations), recovery)
    try:
        broker.run(stop, wakeup)
    finally:
        broker.close()
