"""Counts shared by every acceptor process: the global promises of `listen:` (max_pending,
max_pending_per_source, max_associations, max_associations_per_calling_ae) hold across
acceptors, not per acceptor.

The table lives in shared memory created by the supervisor and handed to each acceptor at
spawn. Each acceptor counts in its own column, so when one dies (even by kill -9) the
supervisor clears that column and its connections leave the counts with it. Keys are 64-bit
BLAKE2 digests (a collision is as likely as a guessed digest), found by linear probing; a key
whose counts fell to zero keeps its slot until the table needs room (then it is compacted).

Updates take an flock on a file as well as a thread lock: the kernel releases an flock when
its holder dies, so a process killed inside the critical section cannot wedge the others (a
multiprocessing.Lock would stay taken for ever).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import threading
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import Any

TOTAL = b""  # the key of the count over every key
MAX_PROBE = 32  # a longer probe compacts the table first


def _digest(key: bytes) -> int:
    if key == TOTAL:
        return 1  # fixed, and never 0 (the empty slot)
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return value if value > 1 else value + 2


class SharedCounts:
    """Counts by key, in `columns` columns (one per acceptor), summed over the columns."""

    def __init__(self, slots: int, columns: int, lock_path: Path | None = None) -> None:
        self.slots, self.columns = max(8, slots), max(1, columns)
        self._keys: Any = RawArray(ctypes.c_uint64, self.slots)
        self._counts: Any = RawArray(ctypes.c_int32, self.slots * self.columns)
        self.lock_path = lock_path
        if lock_path is not None:
            lock_path.touch()
        self._local()

    def _local(self) -> None:
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    # Spawn pickles the arrays (shared memory) but not the locks: each process opens its own.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_thread_lock", "_fd")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local()

    def _lock(self) -> _Locked:
        if self.lock_path is not None and self._fd is None:
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
        return _Locked(self._thread_lock, self._fd)

    # --- under the lock ---------------------------------------------------------------------

    def _total(self, slot: int) -> int:
        row = slot * self.columns
        return sum(self._counts[row:row + self.columns])

    def _find(self, key: bytes, create: bool) -> int | None:
        """The key's slot: probed until the key or an empty slot (keys leave only when the
        table is compacted, so an empty slot ends the chain). A new key takes that empty
        slot when it is near; past MAX_PROBE the table is compacted first."""
        digest = _digest(key)
        slot, steps = self._probe(digest)
        if slot is not None and self._keys[slot] == digest:
            return slot
        if not create:
            return None
        if slot is None or steps > MAX_PROBE:
            if self._compact():
                slot, steps = self._probe(digest)
            if slot is None:
                return None
        self._keys[slot] = digest
        return slot

    def _probe(self, digest: int) -> tuple[int | None, int]:
        """(slot holding `digest` or the first empty one, steps taken); None when full."""
        start = digest % self.slots
        for step in range(self.slots):
            slot = (start + step) % self.slots
            if self._keys[slot] in (digest, 0):
                return slot, step
        return None, self.slots

    def _compact(self) -> bool:
        """Drop keys whose counts are all zero and re-place the rest; whether room was made."""
        live = []
        for slot in range(self.slots):
            if self._keys[slot] and self._total(slot):
                row = slot * self.columns
                live.append((self._keys[slot], list(self._counts[row:row + self.columns])))
        if len(live) >= self.slots - 1:
            return False
        ctypes.memset(self._keys, 0, ctypes.sizeof(self._keys))
        ctypes.memset(self._counts, 0, ctypes.sizeof(self._counts))
        for digest, row_counts in live:
            start = digest % self.slots
            for step in range(self.slots):
                slot = (start + step) % self.slots
                if self._keys[slot] == 0:
                    self._keys[slot] = digest
                    row = slot * self.columns
                    self._counts[row:row + self.columns] = row_counts
                    break
        return True

    def _count(self, key: bytes) -> int:
        slot = self._find(key, create=False)
        return 0 if slot is None else self._total(slot)

    def _bump(self, column: int, key: bytes, delta: int) -> bool:
        slot = self._find(key, create=delta > 0)
        if slot is None:
            return delta < 0  # nothing to take away; no room to add
        index = slot * self.columns + column
        self._counts[index] = max(0, self._counts[index] + delta)
        return True

    # --- the operations ----------------------------------------------------------------------

    def try_add(self, column: int, key: bytes | None, key_limit: int | None,
                total_limit: int | None) -> str | None:
        """Count one more for `key` (and the total) in `column` unless a limit is reached:
        None when counted, else "key", "total" or "full" (the table has no room)."""
        with self._lock():
            if key is not None and key_limit is not None and self._count(key) >= key_limit:
                return "key"
            if total_limit is not None and self._count(TOTAL) >= total_limit:
                return "total"
            if key is not None and not self._bump(column, key, 1):
                return "full"
            if not self._bump(column, TOTAL, 1):
                if key is not None:
                    self._bump(column, key, -1)
                return "full"
        return None

    def remove(self, column: int, key: bytes | None) -> None:
        with self._lock():
            if key is not None:
                self._bump(column, key, -1)
            self._bump(column, TOTAL, -1)

    def count(self, key: bytes | None = None) -> int:
        with self._lock():
            return self._count(TOTAL if key is None else key)

    def clear_column(self, column: int) -> None:
        """Forget what one (dead) acceptor counted."""
        with self._lock():
            for slot in range(self.slots):
                self._counts[slot * self.columns + column] = 0


class _Locked:
    def __init__(self, lock: threading.Lock, fd: int | None) -> None:
        self.lock, self.fd = lock, fd

    def __enter__(self) -> None:
        self.lock.acquire()
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except BaseException:
                self.lock.release()
                raise

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.lock.release()
