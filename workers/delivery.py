"""A delivery thread: takes one Deliver at a time, sends it, and reports the Result."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path

import zmq

from router.audit.forwarded import ForwardTally
from router.core import metrics
from router.core.config import RouterConfig
from router.core.errors import DeliveryError
from router.core.failures import DESTINATION_FAILURES, HOLD_BACK_FAILURES, SPOOL_FAILURES
from router.core.log_context import working_on
from router.core.log_safety import RepeatLimiter
from router.core.messages import BatchResult, Deliver, JobHeader, Result, encode
from router.core.spool import Spool
from router.dicom.store_sender import DicomDestination, SopClassRefused, StorePool
from workers.destinations.factory import Destination, build_destination
from workers.ledger import DeliveryLedger, file_digest
from workers.prepare import FALLBACK_SYNTAXES, Prepared, Preparer, open_uid_map

log = logging.getLogger(__name__)
# A full spool fails every copy of every delivery alike: one line a minute says so.
_SPOOL_FAILURES_LOGGED = RepeatLimiter()


class Reloads:
    """Bumped on SIGHUP: delivery threads then reconnect their destinations, with the TLS
    material the reload left in force (router/core/client_tls.py keeps the old when the new
    does not load)."""

    generation = 0


class DeliveryThread(threading.Thread):
    def __init__(
        self,
        config: RouterConfig,
        spool: Spool,
        tasks: queue.Queue[Deliver | None],
        context: zmq.Context[zmq.Socket[bytes]],
        results_endpoint: str,
        index: int,
        pool: StorePool | None = None,
        forwarded: ForwardTally | None = None,
    ) -> None:
        super().__init__(name=f"delivery-{index}", daemon=True)
        self.config = config
        self.forwarded = forwarded  # the audit trail's counts, when it is on
        self.pool = pool or StorePool()  # shared by the worker's threads
        self.others_open = 0  # of the task in hand: see Deliver.others_open
        self.spool = spool
        self.tasks = tasks
        self.results = context.socket(zmq.PUSH)  # this thread's own socket
        self.results.setsockopt(zmq.LINGER, 1000)
        self.results.connect(results_endpoint)
        self.destinations: dict[str, Destination] = {}
        self.generation = Reloads.generation
        self.ledger: DeliveryLedger | None = None  # opened in run(): sqlite is per thread
        self.preparer = Preparer(config, spool, lambda: open_uid_map(
            spool, config.spool.deidentify_key_file))

    def run(self) -> None:
        try:
            self._open_ledger()
            while True:
                try:
                    task = self.tasks.get(timeout=1.0)
                except queue.Empty:
                    self._release_idle()
                    continue
                if task is None:
                    return
                answer = self._answer(task)
                self._park(task.destination)
                self.results.send(encode(dataclasses.replace(answer, lease=task.lease)))
                self._release_idle()
        finally:
            for destination in self.destinations.values():
                destination.close()
            # The idle associations are the worker's to release (idle_release.py
            # release_at_stop), all at once, not this thread's one by one.
            if self.ledger is not None:
                self.ledger.close()
            self.results.close()

    def _answer(self, task: Deliver) -> Result | BatchResult:
        """Every Deliver is answered: the broker counts it in flight until then (a thread that
        died of an exception left its delivery in flight for ever)."""
        try:
            return self.handle_batch(task) if task.batch else self.handle(task)
        except Exception as exc:
            log.exception("delivery to %s failed unexpectedly; it is retried", task.destination)
            failed = [Result(job.job_id, task.destination, False, "internal", True,
                             repr(exc)[:200]) for job in (task.batch or [task.job])]
            return BatchResult(task.destination, failed) if task.batch else failed[0]

    def _open_ledger(self) -> None:
        if self.config.spool.duplicate_window <= 0:
            return
        try:
            self.ledger = DeliveryLedger(self.spool.ledger_path, self.config.spool.duplicate_window)
        except sqlite3.Error as exc:
            # Delivering matters more than suppressing the rare duplicate: go on without it.
            log.error("delivery thread %s cannot open the duplicate ledger %s (%s): it "
                      "delivers without duplicate suppression until the worker restarts",
                      self.name, self.spool.ledger_path, exc)

    def _release_idle(self) -> None:
        """Prune the ledger. The pool's idle associations are released by the worker's
        IdleReleaser (workers/idle_release.py), never here: a release to a peer gone
        silent waits its whole acse_timeout, and held this thread's next delivery."""
        if self.ledger is not None:
            self.ledger.prune()

    def _park(self, name: str) -> None:
        """Give the association back to the worker's pool: the next delivery to this
        destination, on whichever thread, uses it instead of opening another."""
        destination = self.destinations.get(name)
        if isinstance(destination, DicomDestination):
            destination.park()

    def _destination(self, name: str) -> Destination:
        if name not in self.config.destinations:
            # Removed by a reload while jobs were queued for it: the broker keeps them and
            # sends them here to end as dead letters an operator can replay elsewhere.
            raise DeliveryError("unknown_destination",
                                f"destination {name!r} is no longer configured (removed by "
                                "a config reload); replay the dead letter to another one",
                                transient=False)
        if self.generation != Reloads.generation:
            self.generation = Reloads.generation
            for destination in self.destinations.values():
                destination.close()  # finish with the old certificates, reconnect with new
            self.destinations.clear()
            self.pool.retire_all_idle()  # released by workers/idle_release.py, not here
        if name not in self.destinations:
            self.destinations[name] = build_destination(name, self.config, self.pool)
        return self.destinations[name]

    def handle_batch(self, task: Deliver) -> BatchResult:
        """A completed study or series: every job in order, over one association. Stops at a
        failure of the destination itself; what was not tried goes back as a batch."""
        if task.destination in self.config.destinations:  # otherwise each job says why
            destination = self._destination(task.destination)
            if isinstance(destination, DicomDestination):
                destination.prepare([(j.sop_class_uid, j.transfer_syntax_uid)
                                     for j in task.batch])
        results: list[Result] = []
        for job in task.batch:
            result = self.handle(Deliver(job, task.destination, task.attempt,
                                         others_open=task.others_open))
            results.append(result)
            if (not result.delivered and result.transient
                    and result.reason in HOLD_BACK_FAILURES):
                break
        return BatchResult(task.destination, results)

    def handle(self, task: Deliver) -> Result:
        """Deliver one job to one destination. Always returns a Result: never loses one."""
        with working_on(job=task.job.job_id):
            return self._handle_logged(task)

    def _handle_logged(self, task: Deliver) -> Result:
        job, name = task.job, task.destination
        source = self.spool.instance_path(job.job_id)
        try:
            return self._handle(task, source)
        except DeliveryError as exc:
            if not source.exists():
                return self._withdrawn(job, name)
            if exc.reason in SPOOL_FAILURES:
                _spool_failed(exc)
            else:
                log.log(_level(exc), "job %s to %s, attempt %d: %s", job.job_id, name,
                        task.attempt, exc)
            return Result(job.job_id, name, False, exc.reason, exc.transient, str(exc),
                          during_store=exc.during_store, retry_after=exc.retry_after)
        except FileNotFoundError:
            return self._withdrawn(job, name)  # the acceptor discarded it meanwhile
        except Exception as exc:  # an unexpected error (a locked ledger, ...) is retried
            log.exception("job %s to %s failed unexpectedly", job.job_id, name)
            return Result(job.job_id, name, False, "internal", True, repr(exc)[:200])

    def _handle(self, task: Deliver, source: Path) -> Result:
        job, name = task.job, task.destination
        if not source.exists():
            return self._withdrawn(job, name)
        self._destination(name)  # still configured, before preparing for it
        suppressed, digest = self._already_there(job, name, source)
        if suppressed:
            return self._delivered(job, name, suppressed)
        self.others_open = task.others_open
        started = time.monotonic()
        try:
            copied = self._send(job, name, source)
        finally:
            metrics.labelled(metrics.FORWARD_SECONDS, name).observe(time.monotonic() - started)
        metrics.labelled(metrics.FORWARDED_BYTES, name).inc(job.size)
        self._record(job, name, digest)
        if self.forwarded is not None:  # a counter: the worker's loop writes the records
            self.forwarded.add(name, job.study_uid, job.sop_class_uid, True, job.patient_id,
                               deidentified=self.preparer.deidentifies(job, name))
        return self._delivered(job, name, wrote_copy=copied)

    def _already_there(self, job: JobHeader, name: str, source: Path) -> tuple[str, str]:
        """("redelivery" | "duplicate" | "", digest): whether the ledger says not to send,
        and the file's digest when this destination's policy compares bytes."""
        if self.ledger is None:
            return "", ""
        if self.ledger.has_job(name, job.job_id):
            metrics.DUPLICATES_SUPPRESSED.labels(name, "redelivery").inc()
            log.info("job %s: %s already has this job; not sent again", job.job_id, name)
            return "redelivery", ""
        dest = self.config.destinations.get(name)
        if dest is None or dest.on_duplicate != "skip":
            return "", ""
        received = file_digest(source)
        # Another rule's morph or de-identification sends other bytes from the same file.
        digest = _with_rewrites(received, self.preparer.fingerprint(job, name))
        if self.ledger.has(name, job.sop_instance_uid, digest) or self._had_before_upgrade(
                job, name, received):
            metrics.DUPLICATES_SUPPRESSED.labels(name, "skip").inc()
            log.info("job %s: %s already got these bytes from an earlier reception; skipped "
                     "(on_duplicate: skip)", job.job_id, name)
            return "duplicate", digest
        return "", digest

    def _had_before_upgrade(self, job: JobHeader, name: str, received: str) -> bool:
        """Whether a row recorded under the fingerprint's previous form (repr) names these
        bytes: without it, every re-send of a rewritten instance in the first window after
        the upgrade was sent again."""
        assert self.ledger is not None
        previous = self.preparer.repr_fingerprint(job, name)
        return bool(previous) and self.ledger.has(name, job.sop_instance_uid,
                                                  _with_rewrites(received, previous))

    def _send(self, job: JobHeader, name: str, source: Path) -> bool:
        """Send what this destination should get (workers/prepare.py). A destination that
        refuses the instance's syntax at negotiation gets it in the next syntax it may take,
        one at a time: its `transfer_syntaxes` in order, else Explicit then Implicit VR Little
        Endian (an Implicit-only PACS got nothing when only Explicit was tried). One that
        does not support the SOP class (SopClassRefused) takes it in no syntax: no fallback.
        True: it sent a copy written in the spool."""
        prepared = self.preparer.prepare(job, name, source)
        tried = {prepared.job.transfer_syntax_uid}
        try:
            self._deliver(name, prepared)
            return bool(prepared.copies)
        except DeliveryError as exc:
            if exc.reason != "no_context" or isinstance(exc, SopClassRefused):
                raise
            refused = exc
        finally:
            prepared.cleanup()
        for syntax in self._syntaxes_to_try(name):
            if syntax in tried:
                continue
            tried.add(syntax)
            log.info("job %s: %s refuses %s; trying %s", job.job_id, name,
                     ", ".join(sorted(tried - {syntax})), syntax)
            try:
                retry = self.preparer.prepare(job, name, source, (syntax,))
            except DeliveryError as exc:
                if exc.reason != "transcode":
                    raise
                refused = exc  # not convertible to this one (the reason to report): the next
                continue
            try:
                self._deliver(name, retry)
                return bool(retry.copies)
            except DeliveryError as exc:
                if exc.reason != "no_context" or isinstance(exc, SopClassRefused):
                    raise
                if refused.reason != "transcode":
                    refused = exc
            finally:
                retry.cleanup()
        raise refused

    def _deliver(self, name: str, prepared: Prepared) -> None:
        destination = self._destination(name)
        if isinstance(destination, DicomDestination):
            destination.others_open = self.others_open
        destination.deliver(prepared.job, prepared.path)

    def _syntaxes_to_try(self, name: str) -> tuple[str, ...]:
        dest = self.config.destinations.get(name)
        configured = tuple(getattr(dest, "transfer_syntaxes", None) or ())
        return configured or FALLBACK_SYNTAXES

    def _record(self, job: JobHeader, name: str, digest: str) -> None:
        """Remember a success in the ledger; failing to is no reason to resend it."""
        if self.ledger is None:
            return
        try:
            self.ledger.record(name, job.sop_instance_uid, digest, job.job_id)
        except sqlite3.Error as exc:
            log.warning("job %s delivered to %s, but the duplicate ledger could not record it "
                        "(%s): a redelivery would not be suppressed, and this worker sends "
                        "the next reception of the instance there whatever on_duplicate says",
                        job.job_id, name, exc)

    def _withdrawn(self, job: JobHeader, name: str) -> Result:
        log.warning("job %s is no longer on the spool (its sender was told to retry)",
                    job.job_id)
        return Result(job.job_id, name, False, "withdrawn", False, "not on the spool")

    def _delivered(self, job: JobHeader, name: str, reason: str = "", *,
                   wrote_copy: bool = False) -> Result:
        if len(job.destinations) > 1:
            self._mark_delivered(job, name)
        return Result(job.job_id, name, True, reason, wrote_copy=wrote_copy)

    def _mark_delivered(self, job: JobHeader, name: str) -> None:
        """The marker that lets a recovery skip this destination. It arrived either way:
        without the marker a crash only means a redelivery (the ledger suppresses it)."""
        try:
            self.spool.mark_delivered(job.job_id, name)
        except OSError as exc:
            metrics.SPOOL_ERRORS.labels("mark_delivered").inc()
            log.error("job %s delivered to %s, but the spool could not record it (%s): a "
                      "restart before the job is done would send it there again",
                      job.job_id, name, exc)


def _with_rewrites(digest: str, rewrites: str) -> str:
    """The received file's digest, combined with what the destination's rewrites are."""
    if not rewrites:
        return digest
    return hashlib.blake2b(f"{digest}{rewrites}".encode(), digest_size=20).hexdigest()


def _spool_failed(exc: DeliveryError) -> None:
    """One error line per minute for a spool that cannot take the worker's copies: its
    deliveries wait (no attempt spent) and retry until it can (README "Retries")."""
    if _SPOOL_FAILURES_LOGGED.allow(exc.reason, 1):
        log.error("%s; deliveries that morph, de-identify or transcode wait, without spending "
                  "attempts, until the spool can take their copies", exc)


def _level(exc: DeliveryError) -> int:
    """The destination itself is down (cannot connect, rejected for now): the broker logs
    that once per outage with the same words, so each probe's failure here is debug. An
    abort under an instance stays a warning: it names the instance that may be the cause."""
    if exc.transient and exc.reason in DESTINATION_FAILURES and not exc.during_store:
        return logging.DEBUG
    return logging.WARNING
