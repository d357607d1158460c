"""The broker's live status and queue metrics: what it publishes once a heartbeat."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from router.broker.control import OperatorControl
from router.broker.dead_letter_tally import DeadLetterTally
from router.broker.dispatch import Dispatcher
from router.broker.unwritten_dead_letters import UnwrittenDeadLetters
from router.core import metrics
from router.core.spool import Spool
from router.core.status_snapshots import write_snapshot

log = logging.getLogger("router.broker.main")  # the name these messages always had


class Publishing:
    """Part of the Broker: queue metrics, spool usage and the live snapshot, from the
    Dispatcher's state."""

    dispatcher: Dispatcher
    control: OperatorControl
    associating: set[str]  # destinations with associations to show
    spool: Spool
    dead_letter_tally: DeadLetterTally
    unwritten: UnwrittenDeadLetters
    status_dir: Path | None
    config_generation: int
    unwritten_shown: set[str]  # destinations without a row whose unwritten gauge was set

    def _publish(self, now: float) -> None:
        """Queue metrics, spool usage and the live snapshot, once a heartbeat."""
        destinations = self.destination_summary(now)
        for name, row in destinations.items():
            metrics.QUEUE_DEPTH.labels(name).set(float(row["depth"]))
            metrics.DESTINATION_UP.labels(name).set(1 if row["up"] else 0)
            metrics.DESTINATION_PAUSED.labels(name).set(1 if row["paused"] else 0)
            metrics.IN_FLIGHT.labels(name).set(float(row["in_flight"]))
            metrics.QUEUE_OLDEST.labels(name).set(float(row["oldest_seconds"]))
            if "concurrency" in row:
                metrics.DESTINATION_CONCURRENCY.labels(name).set(float(row["concurrency"]))
            metrics.DEAD_LETTERS_WAITING.labels(name).set(float(row["dead_letters_waiting"]))
        unwritten = self._publish_unwritten(destinations)
        metrics.JOBS_QUEUED.set(len(self.dispatcher.jobs))
        metrics.SPOOL_QUEUED.set(self.dispatcher.queued_bytes)
        spool: dict[str, int] = {"queued_bytes": self.dispatcher.queued_bytes}
        try:
            usage = shutil.disk_usage(self.spool.root)
            metrics.SPOOL_FREE.set(usage.free)
            metrics.SPOOL_SIZE.set(usage.total)
            spool.update(free_bytes=usage.free, size_bytes=usage.total)
            # Each C-STORE takes inodes too: bytes free and none left refuses work as well.
            inodes = os.statvfs(self.spool.root)
            metrics.SPOOL_FREE_INODES.set(inodes.f_favail)
            metrics.SPOOL_INODES.set(inodes.f_files)
            spool.update(free_inodes=inodes.f_favail, inodes=inodes.f_files)
        except OSError as exc:
            log.warning("cannot read the spool's disk usage: %s", exc)
        if self.status_dir is not None:
            try:
                write_snapshot(self.status_dir, "broker", {
                    "config_generation": self.config_generation,
                    "jobs_queued": len(self.dispatcher.jobs), "spool": spool,
                    "workers": len(self.dispatcher.workers), "destinations": destinations,
                    # Every destination's, a row's or not (_publish_unwritten)
                    "dead_letters_unwritten": unwritten,
                    # w<index>-<pid>-<generation>: a reload restarts the next worker once the
                    # one before is connected again (router/service/supervisor.py)
                    "worker_ids": sorted(w.decode(errors="replace")
                                         for w in self.dispatcher.workers)})
            except OSError as exc:
                log.debug("cannot write the live status: %s", exc)

    def _publish_unwritten(self, rows: dict[str, dict[str, float | int | bool | str]]
                           ) -> dict[str, int]:
        """The unwritten dead letters by destination, the gauge set for each. Not only the
        rows': a start whose config no longer has a destination gives its recovered jobs up
        as dead letters, and when the spool is full they waited unseen. A name seen before
        and now without any is set to 0, not left at its last count."""
        unwritten = dict(self.unwritten.by_destination())
        for name in set(rows) | set(unwritten) | self.unwritten_shown:
            metrics.DEAD_LETTERS_UNWRITTEN.labels(name).set(float(unwritten.get(name, 0)))
        self.unwritten_shown = set(unwritten) - set(rows)
        return unwritten

    def destination_summary(self, now: float) -> dict[str, dict[str, float | int | bool | str]]:
        wall = time.time()
        waiting = self.dead_letter_tally.counts(now)
        unwritten = self.unwritten.by_destination()
        out: dict[str, dict[str, float | int | bool | str]] = {}
        for name in self.dispatcher.queues:
            paused_until = self.dispatcher.paused_until[name]
            out[name] = {
                "depth": self.dispatcher.depth(name),
                "in_flight": self.dispatcher.in_flight[name],
                "oldest_seconds": self.dispatcher.oldest_age(name),
                "up": self.dispatcher.is_up(name),
                "in_window": self.dispatcher.in_window(name),  # false: held until it opens
                "paused_for": max(0.0, paused_until - now),
                "failures_in_a_row": self.dispatcher.failures_in_a_row[name],
                # Why it is down (the failure that paused it), until it is up again.
                "backing_off_because": ("" if self.dispatcher.is_up(name)
                                        else self.dispatcher.backoff_reason.get(name, "")),
                # Deliveries waiting for the spool to take their copy (disk full), and why.
                "waiting_for_spool": self.dispatcher.spool_wait.jobs(name),
                "spool_wait_because": (self.dispatcher.spool_wait.reason
                                       if self.dispatcher.spool_wait.jobs(name) else ""),
                "dead_letters_waiting": waiting.get(name, 0),  # on the spool, to replay
                # Given up, but the spool could not take the record yet (disk full).
                "dead_letters_unwritten": unwritten.get(name, 0),
                **self.control.summary(name, now),  # paused by an operator, fallback
                # When this was true: a reader of the rows alone (GET /api/destinations)
                # can tell a hung broker's last word from the current state.
                "updated": wall,
            }
            if name in self.associating:
                # The live association limit (learned or pinned) and what is open now.
                out[name]["concurrency"] = self.dispatcher.concurrency[name].limit
                out[name]["associations"] = self.dispatcher.concurrency[name].open_at(now)
        return out
