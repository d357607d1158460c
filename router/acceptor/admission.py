"""Whether the acceptor takes new work: disk watermark, broker congestion, a spool that
cannot take commits, draining.

Checked for every association request and every C-STORE, so the disk check is cached briefly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from router.core.config import SpoolConfig
from router.core.disk_space import describe_oserror

DISK_CHECK_SECONDS = 0.5
# Once the watermark refused an instance, work is taken again only when that instance would
# fit above it (hysteresis): without it, deleting the refused instance lifted the disk back
# over the line, /readyz said ready, and the next sender's instance was refused after all
# its bytes had come. Capped so that one refused multi-GB slide does not hold back small
# instances that fit.
MAX_WATERMARK_MARGIN = 64 * 1024**2
# After the broker refused a job (queue full), refuse new work for this long before trying.
CONGESTION_SECONDS = 1.0
# After a commit failed (jobs/ gone or replaced by a file, read-only, EIO), refuse new work
# and try a file in each of the spool folders a commit writes to this often.
SPOOL_RECHECK_SECONDS = 1.0
SPOOL_FOLDERS = ("incoming", "jobs", "journal")
# Settled instances kept to be written over (router/core/recycling.py): each holds an inode.
RECYCLE_FOLDER = "recycle"


class Admission:
    def __init__(self, spool: SpoolConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(spool.path)
        self.min_free_bytes = spool.min_free_bytes
        self.min_free_percent = spool.min_free_percent
        self.watermark_bytes = spool.watermark_bytes
        self.watermark_inodes = spool.watermark_inodes
        self.clock = clock
        self._lock = threading.Lock()
        self._disk_checked = -DISK_CHECK_SECONDS
        self._free = 0  # bytes free at the last check
        self._total = 1
        self._free_inodes = 0  # inodes free at the last check
        self._total_inodes = 0  # 0: the filesystem has no inode limit
        self._received_since = 0  # bytes taken in since then: a fast sender outruns the cache
        self._stored_since = 0  # and instances: each took an inode at least
        self._margin = 0  # bytes above the watermark needed before work is taken again
        self._congested_until = 0.0
        self._spool_failure: str | None = None  # why the last commit failed, until one works
        self._spool_checked = 0.0
        self.draining = False

    def mark_congested(self) -> None:
        with self._lock:
            self._congested_until = self.clock() + CONGESTION_SECONDS

    def spool_failed(self, why: str) -> None:
        """A commit (or a file for a C-STORE) failed: refuse work until the spool works."""
        with self._lock:
            self._spool_failure, self._spool_checked = why, self.clock()

    def spool_works(self) -> None:
        """A commit succeeded."""
        if self._spool_failure is not None:
            with self._lock:
                self._spool_failure = None

    def _spool(self) -> str | None:
        with self._lock:
            failure, checked = self._spool_failure, self._spool_checked
        if failure is None or self.clock() - checked < SPOOL_RECHECK_SECONDS:
            return failure
        try:
            self._probe()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._empty_pool():
                why = describe_oserror(exc, self.path)
                self.spool_failed(why)
                return why
            try:  # the recycled files held the inodes (or bytes) a commit needs
                self._probe()
            except OSError as again:
                why = describe_oserror(again, self.path)
                self.spool_failed(why)
                return why
        self.spool_works()
        return None

    def _probe(self) -> None:
        """Create and remove a file in each folder a commit writes to."""
        for folder in SPOOL_FOLDERS:
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.path / folder)
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe)

    def _empty_pool(self) -> bool:
        """Delete the recycled files: on a full spool the inodes and bytes they hold are
        worth more than the creates they save, and nothing settling may come to free them
        (an idle router). Taking from the pool is the acceptor's right; a file another
        taker won meanwhile is simply gone. True when any was deleted."""
        pool = self.path / RECYCLE_FOLDER
        try:
            names = os.listdir(pool)
        except OSError:
            return False
        freed = 0
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pool / name)
                freed += 1
        return freed > 0

    def note_received(self, size: int) -> None:
        with self._lock:
            self._received_since += size
            self._stored_since += 1

    def _disk(self, incoming: int) -> tuple[str, str] | None:
        now = self.clock()
        with self._lock:
            fresh = now - self._disk_checked < DISK_CHECK_SECONDS
        if not fresh:
            self._look(now)
            if self._inodes_low() and self._empty_pool():
                self._look(now)
        with self._lock:
            free, total = self._free - self._received_since, self._total
            watermark = self.watermark_bytes(total)
            if free < watermark and incoming:
                self._margin = max(self._margin, min(incoming, MAX_WATERMARK_MARGIN))
            elif free >= watermark + self._margin:
                self._margin = 0
            margin = self._margin
        percent = 100.0 * free / total
        if free < watermark + margin:
            where = "below its watermark" if free < watermark else "near its watermark"
            room = f" + {margin / 1024**2:.1f} MiB for the instance it refused" if margin else ""
            return "disk_watermark", (
                f"spool disk {where} ({max(0, free) // 1024**2} MiB, "
                f"{max(0.0, percent):.1f}% free; needs {self.min_free_bytes // 1024**2} MiB "
                f"and {self.min_free_percent}%{room})")
        if self._inodes_low():
            with self._lock:
                inodes = max(0, self._free_inodes - self._stored_since)
                total_inodes = self._total_inodes
            # First what ran out: a sender shows the C-STORE's comment cut at 64 characters.
            return "no_free_inodes", (
                f"no free inodes on the spool disk ({inodes} of {total_inodes} free; "
                f"needs {int(self.watermark_inodes(total_inodes))}; df -i)")
        return None

    def _look(self, now: float) -> None:
        stats = os.statvfs(self.path)
        with self._lock:
            self._disk_checked = now
            self._free = stats.f_bavail * stats.f_frsize
            self._total = max(1, stats.f_blocks * stats.f_frsize)
            self._free_inodes, self._total_inodes = stats.f_favail, stats.f_files
            self._received_since = self._stored_since = 0

    def _inodes_low(self) -> bool:
        with self._lock:
            free, total = self._free_inodes - self._stored_since, self._total_inodes
        return total > 0 and free < self.watermark_inodes(total)

    def refusal(self, *, new_association: bool = True,
                incoming: int = 0) -> tuple[str, str] | None:
        """(reason label, operator message) when new work must be refused, else None.
        `incoming`: the size of a received instance whose fate this decides (on the disk
        already, so counted in what is free).

        Draining turns away new associations only: one in progress may go on storing until
        drain_grace ends (a study is not cut in the middle when it need not be).
        """
        if self.draining and new_association:
            return "draining", "router is shutting down"
        disk = self._disk(incoming)
        if disk is not None:
            return disk
        spool = self._spool()
        if spool is not None:
            return "spool_unwritable", f"the spool cannot take commits ({spool})"
        if self.clock() < self._congested_until:
            return "queue_full", "router queue is full"
        return None


class AcceptorState:
    """The acceptor's state as one shared integer, read by the supervisor for /readyz."""

    STARTING = 0
    ACCEPTING = 1
    DRAINING = 2
    DISK_WATERMARK = 3
    QUEUE_FULL = 4
    SPOOL_UNWRITABLE = 5
    NO_FREE_INODES = 6  # bytes may be plentiful: not the watermark an operator would look at

    _CODES: ClassVar[dict[str, int]] = {
        "draining": DRAINING, "disk_watermark": DISK_WATERMARK, "queue_full": QUEUE_FULL,
        "spool_unwritable": SPOOL_UNWRITABLE, "no_free_inodes": NO_FREE_INODES,
    }
    MESSAGES: ClassVar[dict[int, str]] = {
        STARTING: "acceptor not listening yet",
        ACCEPTING: "ready",
        DRAINING: "draining: not accepting work",
        DISK_WATERMARK: "refusing work: spool disk below its watermark",
        QUEUE_FULL: "refusing work: queue full",
        SPOOL_UNWRITABLE: "refusing work: the spool cannot take commits (see the acceptor's log)",
        NO_FREE_INODES: "refusing work: no free inodes on the spool disk (df -i)",
    }

    NAMES: ClassVar[dict[int, str]] = {
        STARTING: "starting", ACCEPTING: "accepting", DRAINING: "draining",
        DISK_WATERMARK: "disk_watermark", QUEUE_FULL: "queue_full",
        SPOOL_UNWRITABLE: "spool_unwritable", NO_FREE_INODES: "no_free_inodes",
    }

    @classmethod
    def code(cls, reason: str) -> int:
        return cls._CODES[reason]
