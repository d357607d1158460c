"""The broker's dead letters: written as deliveries give up, or at a start in batches from
the loop, counted (metrics, the forwarded-instances audit) and logged."""

from __future__ import annotations

import logging
from pathlib import Path

from router.audit.forwarded import ForwardTally
from router.broker.dead_letter_tally import DeadLetterTally
from router.broker.deliveries import DeadLetter, Outcome
from router.broker.unwritten_dead_letters import UnwrittenDeadLetters
from router.core import metrics
from router.core.spool import Spool

log = logging.getLogger("router.broker.main")  # the name these messages always had

DEAD_LETTER_BATCH = 32  # written between two polls while a start's dead letters wait


class DeadLetterWriting:
    """Part of the Broker: dead-letter records on the spool, and what counts them."""

    spool: Spool
    unwritten: UnwrittenDeadLetters
    forwarded: ForwardTally | None
    writing_dead_letters: bool
    dead_letter_tally: DeadLetterTally

    def _apply(self, outcomes: list[Outcome]) -> None:  # the Broker's
        raise NotImplementedError

    def _defer_dead_letters(self, outcomes: list[Outcome]) -> None:
        """At a start: dead letters wait, written by the loop (their jobs stay on the spool
        till then), so the broker answers at once."""
        for outcome in outcomes:
            if isinstance(outcome, DeadLetter):
                self.unwritten.add(outcome)
        self._apply([o for o in outcomes if not isinstance(o, DeadLetter)])

    def _write_deferred_dead_letters(self) -> None:
        """A batch of the dead letters a start made; on a failure the heartbeat's retries
        (and their error log) take over.

        The folder is fsync'd once for the batch, not once per record (minutes at 50,000).
        Crash argument: each record's file is fsync'd before its rename, and the jobs the
        batch settles have their files removed only by `_apply` below, after the folder's
        fsync returned. A crash before it may lose links and records of the batch, never
        their jobs: the next start recovers those and makes their dead letters again (a
        record that did survive is replaced, its link kept). If the fsync fails, the batch's
        letters wait again, their jobs held, as for a failed write."""
        failed: list[DeadLetter] = []
        written: list[tuple[DeadLetter, Path]] = []

        def write(letter: DeadLetter) -> bool:
            path = self._write_record(letter, sync_folder=False)
            if path is None:
                failed.append(letter)
                return False
            written.append((letter, path))
            return True

        settled = self.unwritten.retry(write, DEAD_LETTER_BATCH)
        if written:
            try:
                self.spool.sync_dead_letters()
            except OSError as exc:
                metrics.SPOOL_ERRORS.labels("dead_letter").inc()
                log.error("cannot fsync the dead-letters folder (%s): its %d new dead letters "
                          "are written again, their jobs kept meanwhile", exc, len(written))
                for letter, _ in written:
                    self.unwritten.add(letter)
                self._apply(settled)  # held again: their letters wait
                self.writing_dead_letters = False
                return
        for letter, path in written:
            self._counted(letter, path)
        self._apply(settled)
        if failed or not self.unwritten.letters:
            self.writing_dead_letters = False
            if not failed:
                log.info("all dead letters made at start are written")

    def _dead_letter(self, outcome: DeadLetter, again: bool = False) -> bool:
        path = self._write_record(outcome, again)
        if path is not None:
            self._counted(outcome, path)
        return path is not None

    def _write_record(self, outcome: DeadLetter, again: bool = False, *,
                      sync_folder: bool = True) -> Path | None:
        """The dead letter on the spool (None: the spool refused it, said and counted)."""
        d = outcome.delivery
        record = {"reason": outcome.reason, "detail": outcome.detail, "attempts": d.attempt,
                  **outcome.failed.stamp()}
        try:
            return self.spool.dead_letter(d.job, d.destination, record,
                                          sync_folder=sync_folder)
        except OSError as exc:
            metrics.SPOOL_ERRORS.labels("dead_letter").inc()
            if not again:  # then counted, once a heartbeat, until written
                log.error("cannot write the dead letter of job %s for %s (%s): the job stays "
                          "on the spool and the broker tries again every second",
                          d.job.job_id, d.destination, exc)
            return None

    def _counted(self, outcome: DeadLetter, path: Path) -> None:
        d = outcome.delivery
        self.dead_letter_tally.added(d.destination)  # shown at the next heartbeat
        metrics.DEAD_LETTERS.labels(d.destination, outcome.reason).inc()
        if self.forwarded is not None:
            self.forwarded.add(d.destination, d.job.study_uid, d.job.sop_class_uid, False,
                               d.job.patient_id, outcome.reason)
        log.error("gave up delivering job %s to %s: %s (%s); dead letter %s",
                  d.job.job_id, d.destination, outcome.reason, outcome.detail, path)
