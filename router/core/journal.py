"""The job journal: the headers of committed jobs, appended to segment files in journal/.

One acceptor process writes its own segments, journal/<tag>-<token>-<n>.log (its tag: pid,
start time and boot, router/core/process_identity.py; an older router's is its pid only);
each record is one job header (JSON) framed as MAGIC, length, CRC-32, payload. Appends are
not synced one by one: a batch of them is made durable by one fdatasync per segment it
touched (group commit, router/core/group_commit.py). Because a segment is append-only and
every sync of it succeeded, everything before the last synced record is intact; a crash can
only leave garbage after it, which reading stops at. A full segment is synced before the next
one opens, so only the last segment of a writer can end torn: a torn or short end anywhere
else is damage (whole_records). A segment whose write or sync ever failed is never trusted
again: the commits still waiting on it fail, and the next append starts a new segment.

A closed segment is deleted once none of its jobs still has its instance in jobs/ (they were
delivered, dead-lettered or discarded): looked at when the next segment opens and every half
second by the acceptor (Spool.trim_journal), so a segment does not outlive its jobs on an
idle router; Spool.remove_orphans compacts the rest at start.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.core.process_identity import own_tag

log = logging.getLogger(__name__)

# The first byte is not ASCII, and payloads are ASCII JSON (json.dumps escapes the rest).
MAGIC = b"\xffJR1"
_FRAME = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
MAX_RECORD = 1 << 20  # a header is a few hundred bytes; more is damage, not a record
SEGMENT_RECORDS = 4096
# <tag>-<token>-<n>.log: what Journal names its segments (a compacted one ends -compacted);
# the tag is <pid>.<start>.<boot>, or <pid> in an older router's.
_SEGMENT_NAME = re.compile(r"(\d+(?:\.\d+\.[0-9a-f]{8})?-[0-9a-f]+)-(\d+)\.log")


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path, damage: list[int] | None = None,
                 whole: int | None = None) -> Iterator[dict[str, Any]]:
    """The records of one segment, in order. A damaged stretch is skipped to the next whole
    record (a record's magic never occurs inside a payload, which is ASCII, and its CRC
    proves it): a crash only leaves garbage at the end, but a disk or a hand can damage the
    middle, and the records after it are acknowledged jobs. The byte count of each damaged
    stretch that whole records follow is appended to `damage`. `whole` (whole_records): the
    segment was synced whole with at least that many records, so a torn end, or fewer
    records, is damage too (its torn byte count is appended, 0 for a cut between records)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return  # trimmed while we looked
    offset, skipped_from, count, stretches = 0, None, 0, 0
    while offset + _FRAME.size <= len(data):
        record = _record_at(data, offset)
        if record is None:
            skipped_from = offset if skipped_from is None else skipped_from
            found = data.find(MAGIC, offset + 1)
            offset = found if found >= 0 else len(data)
            continue
        if skipped_from is not None:
            log.warning("journal %s: %d damaged bytes skipped at offset %d; the records "
                        "after them are read", path.name, offset - skipped_from, skipped_from)
            if damage is not None:
                damage.append(offset - skipped_from)
            skipped_from, stretches = None, stretches + 1
        payload, length = record
        count += 1
        yield payload
        offset += _FRAME.size + length
    start = skipped_from if skipped_from is not None else offset
    torn = len(data) - start
    if whole is not None and (torn or (count < whole and not stretches)):
        log.error("journal %s: cut short (%d whole records, then %d torn bytes) although it "
                  "was synced whole before a later segment opened: records of acknowledged "
                  "jobs may be lost (a disk error, a hand, or a write to it that failed)",
                  path.name, count, torn)
        if damage is not None:
            damage.append(torn)
    elif torn:
        # Only a commit that was never acknowledged can end here (see the module docstring).
        log.info("journal %s: %d bytes after the last whole record ignored", path.name, torn)


def _record_at(data: bytes, offset: int) -> tuple[dict[str, Any], int] | None:
    """The record framed at `offset` and its payload length, or None."""
    magic, length, crc = _FRAME.unpack_from(data, offset)
    payload = data[offset + _FRAME.size:offset + _FRAME.size + length]
    if magic != MAGIC or length > MAX_RECORD or len(payload) != length \
            or zlib.crc32(payload) != crc:
        return None
    try:
        record = json.loads(payload)
    except ValueError:
        return None
    return (record, length) if isinstance(record, dict) else None


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.log"))


def whole_records(paths: list[Path], per_segment: int) -> dict[Path, int | None]:
    """How many records each segment was synced whole with (read_records' `whole`): None
    for the last one of each writer (the highest <n> of its <tag>-<token>), whose end a
    crash may have torn; `per_segment` for one its writer closed, synced before the next
    opened (fewer only if a write or sync of it failed); 0 for a compacted one (or a name
    Journal does not make), written whole and synced before use."""
    last: dict[str, int] = {}
    for path in paths:
        if (match := _SEGMENT_NAME.fullmatch(path.name)) is not None:
            writer, n = match[1], int(match[2])
            last[writer] = max(n, last.get(writer, n))
    counts: dict[Path, int | None] = {}
    for path in paths:
        match = _SEGMENT_NAME.fullmatch(path.name)
        if match is None:
            counts[path] = 0
        else:
            counts[path] = None if int(match[2]) == last[match[1]] else per_segment
    return counts


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int | None
    job_ids: list[str] = field(default_factory=list)
    broken: bool = False  # a write or sync failed: what it holds is no longer certain
    finished: int = 0  # job_ids[:finished] are over (a job id never comes back)


class Journal:
    """The appending side, for one process. Not thread-safe by itself: append() and close()
    run under the group commit's lock, and sync() is only ever run by one thread at a time."""

    def __init__(self, folder: Path, is_live: Callable[[str], bool],
                 segment_records: int = SEGMENT_RECORDS) -> None:
        self.folder = folder
        self.is_live = is_live  # does the job still have its instance in jobs/?
        self.segment_records = segment_records
        self._prefix = ""
        self._count = 0
        self._current: Segment | None = None
        self._closed: list[Segment] = []
        self._dirty: set[Segment] = set()  # appended to since the last close()
        self._syncing: set[Segment] = set()  # in the batch being synced
        self._new_name = False  # a segment was created: its name must be synced too

    def append(self, job_id: str, payload: bytes) -> None:
        segment = self._writable()
        data = frame(payload)
        assert segment.fd is not None
        try:
            written = os.write(segment.fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write to {segment.path}")
        except OSError:
            segment.broken = True  # a partial record may sit in it now
            raise
        segment.job_ids.append(job_id)
        self._dirty.add(segment)

    def close(self) -> tuple[list[Segment], bool]:
        """What the batch closing now must sync: the segments it appended to, and whether the
        journal folder gained a name."""
        self._syncing, self._dirty = self._dirty, set()
        new_name, self._new_name = self._new_name, False
        return list(self._syncing), new_name

    def sync(self, batch: tuple[list[Segment], bool]) -> None:
        touched, new_name = batch
        for segment in touched:
            if segment.broken:
                raise OSError(errno.EIO, f"journal segment {segment.path} failed earlier; "
                                         "its records are not trusted")
            assert segment.fd is not None  # open while dirty or syncing (see trim)
            try:
                os.fdatasync(segment.fd)
            except OSError:
                segment.broken = True  # after a failed fsync, Linux may drop the pages
                raise
        if new_name:
            fsync_dir(self.folder)

    def _writable(self) -> Segment:
        current = self._current
        if current is not None and not current.broken \
                and len(current.job_ids) < self.segment_records:
            return current
        if current is not None:
            if not current.broken:
                # Whole on disk before a later segment exists: at start a torn end can then
                # only be a writer's last segment's (a crash), anywhere else it is damage.
                assert current.fd is not None
                try:
                    os.fdatasync(current.fd)
                except OSError:
                    current.broken = True  # its waiting commits fail; the next append rotates
                    raise
            self._closed.append(current)
        self._current = None
        self.trim()
        if not self._prefix:  # the pid of the process that appends, not of its parent
            self._prefix = f"{own_tag()}-{secrets.token_hex(4)}"
        self._count += 1
        path = self.folder / f"{self._prefix}-{self._count:06d}.log"
        # 0600 as the instances: job headers name SOP instances and calling AE titles.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        self._current = Segment(path, fd)
        self._new_name = True
        return self._current

    def trim(self) -> None:
        """Close the fds of closed segments no sync needs any more, and delete those whose
        jobs are all gone (under the group commit's lock). Nothing to do, no system call,
        while no segment is closed. A record's instance is renamed into jobs/ before it is appended,
        so a missing instance means the job is over, never that it is still to come."""
        kept = []
        for segment in self._closed:
            if segment in self._dirty or segment in self._syncing:
                kept.append(segment)
                continue
            if segment.fd is not None:
                os.close(segment.fd)
                segment.fd = None
            # Stops at the first job still queued, and resumes there next time: each record
            # is found finished once, however long a queue keeps a segment.
            while segment.finished < len(segment.job_ids) \
                    and not self.is_live(segment.job_ids[segment.finished]):
                segment.finished += 1
            if segment.finished < len(segment.job_ids):
                kept.append(segment)
            else:
                segment.path.unlink(missing_ok=True)
        self._closed = kept


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
