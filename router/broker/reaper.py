"""Settled jobs leave the spool on a thread of their own, not in the broker's loop.

Removing a job is two or more unlinks (instance, header, per-destination markers), and an
unlink on a busy journalling filesystem takes milliseconds: done inline, they held up every
dispatch and acknowledgement behind them (py-spy: 43% of the broker's samples at 10 KB x4).
Order does not matter for correctness: a job whose removal a crash interrupted is recovered
at the next start and its deliveries are suppressed by the workers' ledger (a redelivery), or
delivered again (at least once), never lost. An instance the broker marks reusable is renamed
into recycle/ rather than unlinked (router/core/recycling.py).
"""

from __future__ import annotations

import logging
import queue
import threading

from router.core import metrics
from router.core.messages import JobHeader
from router.core.spool import Spool

log = logging.getLogger(__name__)


class SpoolReaper:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._queue: queue.SimpleQueue[tuple[JobHeader, bool] | None] = queue.SimpleQueue()
        self._pending: set[str] = set()  # asked for and not done yet
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="spool-reaper", daemon=True)
        self._thread.start()

    def remove(self, job: JobHeader, *, reuse: bool = False) -> None:
        with self._lock:
            self._pending.add(job.job_id)
        self._queue.put((job, reuse))

    def removing(self, job_id: str) -> bool:
        """Is this settled job's removal still to come? (Its files are still there.)"""
        with self._lock:
            return job_id in self._pending

    def close(self, timeout: float = 30.0) -> None:
        """Finish the removals already asked for, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            job, reuse = item
            try:
                self.spool.remove(job, reuse=reuse)
            except OSError as exc:  # left for the next start's recovery, which removes it
                metrics.SPOOL_ERRORS.labels("remove").inc()
                log.error("cannot remove settled job %s from the spool: %s", job.job_id, exc)
            with self._lock:
                self._pending.discard(job.job_id)
