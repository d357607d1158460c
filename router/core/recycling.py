"""Settled jobs' instance files are written over by new C-STOREs instead of deleted and
created again.

Why: on ext4 the router spent 15% of all its CPU at 10 KB x4 creating files (perf, on this
project's CI machine kind, whose ext4 has no journal): the inode allocator skips inodes freed
in the last minutes, and at hundreds of instances deleted per second it scans past thousands
of them on every create. PostgreSQL recycles its WAL segment files for the same reason, and
any filesystem saves an inode allocation and a free per instance.

The broker's reaper offers a settled job's instance (`retire`): it is renamed into recycle/
when it is small, nothing else links to it (a dead letter or replay shares the inode) and the
pool is not full; otherwise the caller unlinks it. Whether a worker could still be reading it
is the broker's question (router/broker/dispatch_state.py: only a job never leased twice is
offered). The acceptor takes one (`reuse`) by renaming it to its new name in incoming/, which
only one taker can win, and writes over it from the start; the receiver cuts off what is left
of the old content (router/acceptor/store_receiver.py). Names in recycle/ mean nothing: a
crash leaves garbage there, never a job.

The pool must not hold space the spool needs: with less than twice the disk watermark free
(`keep_free`), or with few free inodes (each pooled file holds one), nothing is retired and
the pool is emptied, so a spool near its watermark frees the same space as without
recycling. The acceptor empties it too when a commit meets a full disk
(router/acceptor/admission.py): an idle router settles nothing that would look.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from router.core.disk_space import MIN_FREE_INODES

POOL_FILES = 64  # enough to absorb bursts between settling and receiving
MAX_FILE_BYTES = 1 << 20  # a large instance's create is nothing beside its writing
RESCAN_SECONDS = 0.2  # how often an acceptor looks again into an empty pool
RECOUNT_EVERY = 16  # the reaper counts the pool again after this many retirements

log = logging.getLogger(__name__)


class FileRecycler:
    """One per process and folder; thread-safe. The pool holds at most POOL_FILES files of
    at most MAX_FILE_BYTES each (64 MiB), counted as used space by the disk watermark."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._folder = str(folder)
        # Free bytes the spool must keep on a disk of that size (SpoolConfig.watermark_bytes).
        self.keep_free: Callable[[int], float] = lambda total: 0
        self._lock = threading.Lock()
        self._names: list[str] = []  # the acceptor's side: seen in the pool, not yet taken
        self._rescan_at = 0.0
        self._pooled = POOL_FILES  # the reaper's side: unknown until counted
        self._until_recount = 0
        self.reused = 0  # files handed out, for the metric and tests
        self._disk_low = False  # the last look found the disk near its watermark

    def retire(self, path: str | Path) -> bool:
        """Move `path` into the pool if it may be written over; False: the caller unlinks."""
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 \
                or info.st_size > MAX_FILE_BYTES or not self._room():
            return False
        try:
            os.rename(path, f"{self._folder}/{os.path.basename(path)}")
        except OSError:
            return False
        with self._lock:
            self._pooled += 1
        return True

    def _room(self) -> bool:
        """The acceptors take from the pool without telling: count it now and then, and
        look at the disk then too."""
        with self._lock:
            if self._until_recount <= 0:
                self._until_recount = RECOUNT_EVERY
                try:
                    disk = os.statvfs(self.folder)
                    free, total = disk.f_bavail * disk.f_frsize, disk.f_blocks * disk.f_frsize
                    if free < 2 * self.keep_free(total) or self._inodes_low(disk):
                        self._pooled = POOL_FILES  # none until the next look
                        self._empty()
                        self._note_disk(low=True)
                        return False
                    self._note_disk(low=False)
                    self._pooled = len(os.listdir(self.folder))
                except OSError:
                    self._pooled = POOL_FILES
                    return False
            self._until_recount -= 1
            return self._pooled < POOL_FILES

    @staticmethod
    def _inodes_low(disk: os.statvfs_result) -> bool:
        """Each pooled file holds an inode: on a filesystem with few left (a small tmpfs,
        ext4 full of small files) the pool must not hold the ones commits need. Twice the
        pool and the acceptor's floor, so the pool is emptied before admission refuses."""
        return disk.f_files > 0 and disk.f_favail < 2 * (POOL_FILES + MIN_FREE_INODES)

    def _note_disk(self, low: bool) -> None:
        """One line when recycling stops for the disk and one when it resumes: the count of
        files written over is a metric, and its standing still wants a reason."""
        if low != self._disk_low:
            self._disk_low = low
            if low:
                log.info("spool disk has less than twice its watermark free: settled files "
                         "are deleted instead of recycled until it has again")
            else:
                log.info("spool disk has room again: settled files are recycled")

    def _empty(self) -> None:
        for name in os.listdir(self.folder):
            with contextlib.suppress(FileNotFoundError):  # an acceptor took it meanwhile
                os.unlink(self.folder / name)

    def reuse(self, target: Path) -> tuple[int, int] | None:
        """An open, writable descriptor of a pooled file renamed to `target`, and the size of
        what it holds still; None when the pool is empty (the caller creates a new file)."""
        while (name := self._next_name()) is not None:
            try:
                os.rename(f"{self._folder}/{name}", target)
            except FileNotFoundError:
                continue  # another acceptor took it first
            except OSError:
                return None
            try:
                # Never through a link someone put there: only the reaper fills the pool.
                fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                target.unlink(missing_ok=True)
                return None
            with self._lock:
                self.reused += 1
            return fd, os.fstat(fd).st_size
        return None

    def _next_name(self) -> str | None:
        with self._lock:
            if not self._names:
                now = time.monotonic()
                if now < self._rescan_at:
                    return None
                try:
                    self._names = os.listdir(self.folder)
                except OSError:
                    self._names = []
                self._rescan_at = now + (RESCAN_SECONDS if not self._names else 0.0)
            return self._names.pop() if self._names else None
