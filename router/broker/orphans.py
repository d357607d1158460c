"""Jobs a dead acceptor committed but never handed over, queued while the router runs.

An acceptor makes a job durable (its instance in jobs/, its header in the acceptor's own
journal segment) before it submits the job to the broker. Killed between the two (kill -9,
the OOM killer), it leaves a job the broker never heard of; its sender was not told Success.
Such a job used to wait for the broker's next start (Broker.recover), which could be weeks.
Now the broker looks at journal/ once a second: a segment whose writer is gone (the pid in its
name, journal.py; its pid and start time, so that another process that took the pid is not
taken for it) is read once, and every job in it that still has its instance and that the
broker neither queues nor is removing is queued as recovery at start would queue it. It is
delivered at least once, as after a restart: the sender, never told Success, may well have
sent it again, and the destination then gets both (a deliberate re-send is new work).

A segment read this way is deleted once none of its jobs has an instance left; one whose
writer is alive is only looked at again. Segments present at the broker's start whose writer
is already gone were read by Broker.recover and are not read twice.

The same look deletes a dead acceptor's files in incoming/ (their names start with the pid
too): datasets it was receiving, or had received and not committed, when it died. Nobody
was told Success for them. And a dead worker's copies in relay/ (morphed, de-identified or
transcoded for a destination; named after the worker too): the job is in jobs/ and is
delivered again. Before, both stayed until the router's next start. Likewise the instances
of a relayed C-GET or C-MOVE whose acceptor died (named after it: it would have passed them
on to the requester, whose association went with it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from router.core import metrics
from router.core.journal import segments
from router.core.owned_names import process_alive, writer_of, writer_pid
from router.core.process_identity import ProcessTag
from router.core.spool import RecoveredJob, Spool

log = logging.getLogger(__name__)

_WHAT_THEY_WERE = {
    "incoming": "datasets an acceptor was receiving; their senders were not told Success",
    "relay": "a worker's copies of jobs it was preparing or sending (the jobs stay queued), "
             "or instances of a C-GET or C-MOVE relayed by an acceptor that died",
}


class OrphanedJournals:
    def __init__(self, spool: Spool,
                 alive: Callable[[ProcessTag], bool] = process_alive) -> None:
        self.spool = spool
        self.alive = alive
        self._seen: set[str] = set()  # segment names read already (or not ours to read)
        # A read segment -> its jobs that had their instance then, and how many of those
        # (from the first) are over: a job that left the spool never comes back to it.
        self._adopted: dict[Path, tuple[list[str], int]] = {}

    def start(self) -> None:
        """After Broker.recover read every segment: those whose writer is gone are done."""
        self._seen = {p.name for p in segments(self.spool.journal) if not self._writer_alive(p)}

    def collect(self, unknown: Callable[[str], bool]) -> list[RecoveredJob]:
        """The jobs of every segment whose writer died since the last call, for which
        `unknown(job_id)` holds (the broker neither queues nor removes it)."""
        self._clear_files_of_the_dead()
        present = segments(self.spool.journal)
        self._seen &= {p.name for p in present}
        self._delete_finished()
        found: list[RecoveredJob] = []
        for path in present:
            if path.name in self._seen or self._writer_alive(path):
                continue
            self._seen.add(path.name)
            jobs = self.spool.recover_segment(path)
            self._adopted[path] = ([job.header.job_id for job in jobs], 0)
            mine = [job for job in jobs if unknown(job.header.job_id)]
            if mine:
                metrics.RECOVERED_JOBS.inc(len(mine))
                log.warning("queued %d job(s) from journal %s: its acceptor (pid %s) stopped "
                            "after making them durable and before handing them over; their "
                            "senders were not told Success and may have sent them again",
                            len(mine), path.name, writer_pid(path.name))
            found += mine
        return found

    def _clear_files_of_the_dead(self) -> None:
        cleared = self.spool.clear_files_of_the_dead(self.alive)
        for folder, count in cleared.items():
            if count:
                metrics.DEAD_PROCESS_FILES_CLEARED.labels(folder).inc(count)
                log.warning("deleted %d file(s) in %s/ of a process that stopped: %s", count,
                            folder, _WHAT_THEY_WERE.get(folder, "left by it"))

    def _writer_alive(self, path: Path) -> bool:
        writer = writer_of(path.name)
        return writer is None or self.alive(writer)  # a name we did not write: left to the start

    def _delete_finished(self) -> None:
        for path, (job_ids, over) in list(self._adopted.items()):
            # Stops at the first job still queued and resumes there: a stat or so a second.
            while over < len(job_ids) and not self.spool.instance_path(job_ids[over]).exists():
                over += 1
            if over < len(job_ids):
                self._adopted[path] = (job_ids, over)
            else:
                path.unlink(missing_ok=True)
                del self._adopted[path]
