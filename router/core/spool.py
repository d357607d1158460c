"""The spool: durable job files on one filesystem, the truth that recovery reads.

The layout of its folders: router/core/spool_layout.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.core.durable_files import fsync_path, write_atomically
from router.core.errors import ProtocolError
from router.core.group_commit import GroupCommit, Ticket
from router.core.journal import (
    SEGMENT_RECORDS,
    Journal,
    Segment,
    frame,
    read_records,
    segments,
    whole_records,
)
from router.core.messages import JobHeader
from router.core.owned_names import unlink_owned_by_dead
from router.core.process_identity import ProcessTag, own_tag
from router.core.spool_layout import SpoolLayout

log = logging.getLogger(__name__)


_last_id_time = 0
_id_lock = threading.Lock()


def new_job_id(clock: Callable[[], int] = time.time_ns) -> str:
    """Time-ordered, so that recovery replays jobs in the order they arrived; never earlier
    than this process's last id, so that a step back of the system clock does not put a
    later reception (a corrected instance re-sent) before an earlier one at recovery."""
    global _last_id_time
    with _id_lock:
        now = _last_id_time = max(clock(), _last_id_time + 1)
    return f"{now:016x}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class RecoveredJob:
    header: JobHeader
    delivered: frozenset[str]


@dataclass(frozen=True)
class PendingCommit:
    """A commit whose journal record waits for its group sync (Spool.stage_commit)."""

    path: Path
    committer: GroupCommit[Any]
    ticket: Ticket

    def wait(self) -> None:
        """Return once the job is durable; raise OSError if its group sync failed."""
        self.committer.wait(self.ticket)


class Spool(SpoolLayout):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._committer: GroupCommit[tuple[list[Segment], bool]] | None = None
        self._journal_writer: Journal | None = None
        self._committer_lock = threading.Lock()

    def commit(self, header: JobHeader, received: Path, *, synced: bool = False) -> Path:
        """Take ownership of a fully received file: durable once this returns.

        One fsync of its own (the instance's bytes, before its name can be durable; done
        already when `synced`: the receiver syncs through the descriptor it wrote with);
        its header is appended to the journal, and one group sync (the journal segment and
        the jobs folder) covers every commit waiting at that moment."""
        pending = self.stage_commit(header, received, synced=synced)
        pending.wait()
        return pending.path

    def stage_commit(self, header: JobHeader, received: Path, *,
                     synced: bool = False) -> PendingCommit:
        """commit() up to its group sync: the instance is durable and in its place, its
        record appended but not yet durable. Nothing may rely on the job (acknowledge it)
        before the returned PendingCommit's wait(); meanwhile others may already read it."""
        if not synced:
            fsync_path(received)
        target = self.instance_path(header.job_id)
        os.replace(received, target)  # same filesystem: incoming/ is in the spool
        payload = json.dumps(header.to_dict(), separators=(",", ":")).encode()
        journal, committer = self._group()
        ticket = committer.stage(lambda: journal.append(header.job_id, payload))
        return PendingCommit(target, committer, ticket)

    def commit_counts(self) -> tuple[int, int]:
        """(commits made durable, shared syncs that did it) in this process so far."""
        committer = self._committer
        return (committer.commits, committer.syncs) if committer is not None else (0, 0)

    def _group(self) -> tuple[Journal, GroupCommit[tuple[list[Segment], bool]]]:
        with self._committer_lock:
            if self._committer is None:
                journal = Journal(self.journal, lambda job_id: self.instance_path(job_id).exists(),
                                  SEGMENT_RECORDS)

                def sync(batch: tuple[list[Segment], bool]) -> None:
                    journal.sync(batch)
                    fsync_path(self.jobs, directory=True)  # the batch's renames

                self._journal_writer = journal
                self._committer = GroupCommit(journal.close, sync)
            assert self._journal_writer is not None
            return self._journal_writer, self._committer

    def trim_journal(self) -> None:
        """Delete closed journal segments whose jobs are all over. Segments are otherwise
        looked at only when a new one opens: on a router gone idle, a full one stayed until
        the next 4,096 commits. The acceptor calls this every half second, off the
        C-STORE path; while no segment is closed it costs no system call."""
        journal, committer = self._journal_writer, self._committer
        if journal is not None and committer is not None:
            committer.locked(journal.trim)

    def rewrite_header(self, header: JobHeader) -> None:
        """Replace a queued job's header (its destinations changed: drain-to, fallback).
        Atomic and fsync'd; the caller fsyncs the jobs folder (sync_jobs) after a series."""
        payload = json.dumps(header.to_dict(), separators=(",", ":")).encode()
        write_atomically(self._header_path(header.job_id), payload)

    def sync_jobs(self) -> None:
        fsync_path(self.jobs, directory=True)

    def mark_delivered(self, job_id: str, destination: str) -> None:
        marker = self._marker_path(job_id, destination)
        marker.touch()
        fsync_path(self.jobs, directory=True)

    def remove(self, header: JobHeader, *, reuse: bool = False) -> None:
        """Forget a job whose every destination is settled (delivered or dead-lettered).
        `reuse`: no worker can still be reading its instance, so the file may be recycled."""
        # The instance goes first: without it the job is no longer real for recovery. Plain
        # strings, not Paths: this runs once per instance (py-spy: pathlib was a tenth of
        # the broker's reaper thread).
        base = f"{self._jobs_dir}/{header.job_id}"
        if not (reuse and self.recycler.retire(base + ".dcm")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base + ".dcm")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base + ".json")
        if len(header.destinations) > 1:
            for destination in header.destinations:
                self._marker_path(header.job_id, destination).unlink(missing_ok=True)

    def discard(self, header: JobHeader) -> None:
        """Undo a commit whose job the sender was not told Success for."""
        self.remove(header)

    def remove_orphans(self) -> int:
        """Delete the leftovers of commits a crash interrupted, and compact the journal into
        one segment holding the jobs still queued. Only while no acceptor runs."""
        count = 0
        instances = {p.stem for p in self.jobs.glob("*.dcm")}
        headers = {p.stem for p in self.jobs.glob("*.json") if not p.stem.startswith(".")}
        damage: list[int] = []
        journaled = self._journal_headers(instances - headers, damage)
        unconfirmed = instances - headers - journaled.keys()
        if damage and unconfirmed:
            # A damaged journal may have lost acknowledged records: what has no header is
            # kept for an operator (router/core/unconfirmed.py), never deleted on a guess.
            from router.core.unconfirmed import keep_unconfirmed

            self.unconfirmed = keep_unconfirmed(self, sorted(unconfirmed))
            unconfirmed = set()
        self._compact_journal(journaled)
        for job_id in headers - instances:
            (self.jobs / f"{job_id}.json").unlink(missing_ok=True)
            count += 1
        for job_id in unconfirmed:
            # Renamed in, its record never written whole: a commit never acknowledged.
            (self.jobs / f"{job_id}.dcm").unlink(missing_ok=True)
            count += 1
        for tmp in [*self.jobs.glob(".*.tmp"), *self.journal.glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)
        for marker in self.jobs.glob("*.done"):
            if marker.name.split(".", 1)[0] not in instances:
                marker.unlink(missing_ok=True)  # a crash inside remove()
        self._clear_replay_leftovers()
        return count

    def _clear_replay_leftovers(self) -> None:
        """A replay a crash (or a full disk, before the fix) cut short: a temp file, or a
        header without its instance. Its dead letter stays, to replay again. Under the
        dead-letter lock: a `dead-letters replay` may be staging one right now."""
        with self.dead_letter_lock():
            staged = {p.stem for p in self.replay.glob("*.dcm")}
            for path in self.replay.glob("*.json"):
                if path.stem not in staged and not path.name.startswith("."):
                    path.unlink(missing_ok=True)
            for tmp in self.replay.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def _compact_journal(self, live: dict[str, JobHeader]) -> None:
        """Replace every segment by one with just the `live` records. The new one is durable
        before an old one goes; a crash in between leaves duplicates, which are identical."""
        old = segments(self.journal)
        if not old:
            return
        if live:
            data = b"".join(
                frame(json.dumps(live[job_id].to_dict(), separators=(",", ":")).encode())
                for job_id in sorted(live))
            name = f"{own_tag()}-{secrets.token_hex(4)}-compacted.log"
            try:
                write_atomically(self.journal / name, data)
                fsync_path(self.journal, directory=True)
            except OSError as exc:  # e.g. a full disk: the old segments still say it all
                log.warning("spool: journal not compacted (%s); its %d segments are kept",
                            exc, len(old))
                for tmp in self.journal.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                return
        for path in old:
            path.unlink(missing_ok=True)

    def clear_incoming(self) -> int:
        """Delete half-received files left by a crash; their senders never got Success (and
        retrieves in progress, which their requesters will repeat). The recycled files go
        too: after a power cut on a filesystem without a journal, a rename's old name can
        come back beside its new one, and a pool entry must never be written over when it
        may also be an acknowledged job's instance (files of incoming/ are unlinked for the
        same reason, never reused)."""
        count = 0
        for path in [*self.incoming.iterdir(), *self.relay.iterdir()]:
            if path.is_file():
                path.unlink(missing_ok=True)
                count += 1
        if self.recycled.is_dir():
            for path in self.recycled.iterdir():
                path.unlink(missing_ok=True)
        return count

    def clear_files_of_the_dead(self, alive: Callable[[ProcessTag], bool]) -> dict[str, int]:
        """Delete the files of processes that are gone (`alive(writer)` false), by folder:
        in incoming/, an acceptor's dataset that was arriving or received and not committed
        (its sender was never told Success); in relay/, a worker's copy of a job it was
        preparing or sending (the job itself stays in jobs/ and is delivered again), or an
        instance of a C-GET or C-MOVE a dead acceptor was relaying. While the router runs,
        without waiting for its next start (clear_incoming)."""
        return {folder.name: unlink_owned_by_dead(folder, alive)
                for folder in (self.incoming, self.relay)}

    def recover(self) -> Iterator[RecoveredJob]:
        """Every committed job with the destinations it already reached, oldest first."""
        instances = {p.stem for p in self.jobs.glob("*.dcm")}
        headers = self._journal_headers(instances)
        for header_path in self.jobs.glob("*.json"):
            job_id = header_path.stem
            if job_id.startswith(".") or job_id not in instances:
                continue  # a commit in progress (or interrupted: remove_orphans cleans it)
            try:
                headers[job_id] = JobHeader.from_dict(json.loads(header_path.read_bytes()))
            except (ValueError, ProtocolError) as exc:
                log.error("spool: job %s has an unreadable header (%s); left in place", job_id, exc)
                headers.pop(job_id, None)
            except OSError as exc:  # EACCES, EIO, a directory: never a broker crash loop
                # Late: `dicom-router run` imports this module before it sets
                # PROMETHEUS_MULTIPROC_DIR, and an early import leaves the supervisor's
                # own metrics out of /metrics (router/core/metrics.py).
                from router.core import metrics

                metrics.SPOOL_ERRORS.labels("recover").inc()
                log.error("spool: cannot read the header of job %s (%s); left in place, "
                          "recovered at a start once the file can be read", job_id, exc)
                headers.pop(job_id, None)
        for job_id in sorted(headers):
            yield self._recovered(headers[job_id])

    def recover_segment(self, path: Path) -> list[RecoveredJob]:
        """The jobs of one journal segment that still have their instance in jobs/, with the
        destinations they reached: a dead acceptor's, read while the router runs
        (router/broker/orphans.py)."""
        def queued(job_id: str) -> bool:  # not over already, and a name of ours
            return "/" not in job_id and os.path.exists(self.instance_path(job_id))

        return [self._recovered(header) for header in self._headers_in(path, queued)]

    def _recovered(self, header: JobHeader) -> RecoveredJob:
        """A job to queue again, with the destinations its .done markers say it reached."""
        return RecoveredJob(header, frozenset(
            d for d in header.destinations if self._marker_path(header.job_id, d).exists()))

    def _journal_headers(self, instances: set[str], damage: list[int] | None = None
                         ) -> dict[str, JobHeader]:
        """The journal's header of every job in `instances` that has one (`damage`: see
        journal.read_records; a segment cut short that is not its writer's last counts)."""
        found: dict[str, JobHeader] = {}
        paths = segments(self.journal)
        whole = whole_records(paths, SEGMENT_RECORDS)
        for path in paths:
            for header in self._headers_in(path, lambda job_id: job_id in instances
                                           and job_id not in found, damage, whole[path]):
                found[header.job_id] = header
        return found

    def _headers_in(self, path: Path, wanted: Callable[[str], bool],
                    damage: list[int] | None = None, whole: int | None = None
                    ) -> Iterator[JobHeader]:
        """The headers of the records in one segment whose job id is `wanted`; an unusable
        one is logged and skipped."""
        for record in read_records(path, damage, whole):
            job_id = record.get("job_id")
            if not isinstance(job_id, str) or not wanted(job_id):
                continue
            try:
                yield JobHeader.from_dict(record)
            except (ValueError, ProtocolError) as exc:
                log.error("spool: journal %s holds an unusable header for job %s (%s)",
                          path.name, job_id, exc)

    def stage_replay(self, header: JobHeader, instance: Path) -> None:
        """Put a job in the replay inbox; the broker moves it into jobs/ and queues it."""
        payload = json.dumps(header.to_dict(), separators=(",", ":")).encode()
        header_path = self.replay / f"{header.job_id}.json"
        write_atomically(header_path, payload)
        try:
            os.link(instance, self.replay / f"{header.job_id}.dcm")  # the instance last
        except OSError:
            with contextlib.suppress(OSError):  # no header left without its instance
                header_path.unlink()
            raise
        fsync_path(self.replay, directory=True)

    def take_replays(self) -> list[JobHeader]:
        """Move staged replays into jobs/ (header first, instance last) and return them."""
        taken = []
        for instance in sorted(self.replay.glob("*.dcm")):
            job_id = instance.stem
            header_path = self.replay / f"{job_id}.json"
            try:
                header = JobHeader.from_dict(json.loads(header_path.read_bytes()))
            except (OSError, ValueError, ProtocolError) as exc:
                log.error("replay %s has no usable header (%s); left in %s", job_id, exc,
                          self.replay)
                continue
            os.replace(header_path, self._header_path(job_id))
            os.replace(instance, self.instance_path(job_id))
            taken.append(header)
        if taken:
            fsync_path(self.jobs, directory=True)
        return taken

    @contextlib.contextmanager
    def dead_letter_lock(self) -> Iterator[None]:
        """Serialises the broker's dead-lettering and an operator's purge/replay: otherwise a
        purge could delete an instance that a new record is about to refer to."""
        with open(self.root / "dead-letters.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def dead_letter(self, header: JobHeader, destination: str, record: dict[str, Any], *,
                    sync_folder: bool = True) -> Path:
        """Keep the instance and why it could not be delivered, for an operator to replay.
        `sync_folder=False`: the caller calls sync_dead_letters() after a batch of these, and
        before it removes any of their jobs' files."""
        instance = self.dead_letters / f"{header.job_id}.dcm"
        body = {"job": header.to_dict(), "destination": destination, **record}
        target = self.dead_letters / f"{header.job_id}.{destination}.json"
        with self.dead_letter_lock():
            linked = not instance.exists()
            if linked:
                os.link(self.instance_path(header.job_id), instance)
            try:
                write_atomically(target, json.dumps(body, indent=2).encode())
            except OSError:
                if linked:  # no instance without its record: the broker writes both again
                    with contextlib.suppress(OSError):
                        instance.unlink()
                raise
            if sync_folder:
                fsync_path(self.dead_letters, directory=True)
        return target

    def sync_dead_letters(self) -> None:
        """Make the links and records dead_letter() made without `sync_folder` durable."""
        fsync_path(self.dead_letters, directory=True)
