"""A delivery thread: takes one Deliver at a time, sends it, and reports the Result."""

from __future__ import annotations

import logging
import queue
import threading
import time

import zmq

from router import metrics
from router.config import RouterConfig
from router.errors import DeliveryError
from router.messages import Deliver, JobHeader, Result, encode
from router.spool import Spool
from workers.destinations import Destination, build_destination
from workers.dicom_destination import DicomDestination
from workers.ledger import DeliveryLedger, file_digest

log = logging.getLogger(__name__)


class DeliveryThread(threading.Thread):
    def __init__(
        self,
        config: RouterConfig,
        spool: Spool,
        tasks: queue.Queue[Deliver | None],
        context: zmq.Context[zmq.Socket[bytes]],
        results_endpoint: str,
        index: int,
    ) -> None:
        super().__init__(name=f"delivery-{index}", daemon=True)
        self.config = config
        self.spool = spool
        self.tasks = tasks
        self.results = context.socket(zmq.PUSH)  # this thread's own socket
        self.results.setsockopt(zmq.LINGER, 1000)
        self.results.connect(results_endpoint)
        self.destinations: dict[str, Destination] = {}
        self.ledger: DeliveryLedger | None = None  # opened in run(): sqlite is per thread

    def run(self) -> None:
        if self.config.spool.duplicate_window > 0:
            self.ledger = DeliveryLedger(self.spool.ledger_path, self.config.spool.duplicate_window)
        try:
            while True:
                try:
                    task = self.tasks.get(timeout=1.0)
                except queue.Empty:
                    self._release_idle()
                    continue
                if task is None:
                    return
                self.results.send(encode(self.handle(task)))
        finally:
            for destination in self.destinations.values():
                destination.close()
            if self.ledger is not None:
                self.ledger.close()
            self.results.close()

    def _release_idle(self) -> None:
        if self.ledger is not None:
            self.ledger.prune()
        now = time.monotonic()
        for destination in self.destinations.values():
            if isinstance(destination, DicomDestination):
                destination.release_if_idle(now)

    def _destination(self, name: str) -> Destination:
        if name not in self.destinations:
            self.destinations[name] = build_destination(name, self.config)
        return self.destinations[name]

    def handle(self, task: Deliver) -> Result:
        job, name = task.job, task.destination
        source = self.spool.instance_path(job.job_id)
        if not source.exists():
            log.warning("job %s is no longer on the spool (its sender was told to retry)",
                        job.job_id)
            return Result(job.job_id, name, False, "withdrawn", False, "not on the spool")
        started = time.monotonic()
        digest = file_digest(source) if self.ledger is not None else ""
        if self.ledger is not None and self.ledger.has(name, job.sop_instance_uid, digest):
            metrics.DUPLICATES_SUPPRESSED.labels(name).inc()
            log.info("job %s: %s already has these bytes; not sent again", job.job_id, name)
            return self._delivered(job, name, "duplicate")
        try:
            self._destination(name).deliver(job, source)
        except DeliveryError as exc:
            log.warning("job %s to %s, attempt %d: %s", job.job_id, name, task.attempt, exc)
            return Result(job.job_id, name, False, exc.reason, exc.transient, str(exc))
        except Exception as exc:  # never lose the Result: an unexpected error is retried
            log.exception("job %s to %s failed unexpectedly", job.job_id, name)
            return Result(job.job_id, name, False, "internal", True, repr(exc)[:200])
        finally:
            metrics.FORWARD_SECONDS.labels(name).observe(time.monotonic() - started)
        metrics.FORWARDED_BYTES.labels(name).inc(job.size)
        if self.ledger is not None:
            self.ledger.record(name, job.sop_instance_uid, digest, job.job_id)
        return self._delivered(job, name)

    def _delivered(self, job: JobHeader, name: str, reason: str = "") -> Result:
        if len(job.destinations) > 1:
            self.spool.mark_delivered(job.job_id, name)  # so recovery skips this destination
        return Result(job.job_id, name, True, reason)
