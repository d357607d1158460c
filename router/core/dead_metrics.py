"""A dead child's counters and histograms, folded into one accumulated file per type.

prometheus_client keeps a file per process and type (counter_<pid>.db, histogram_<pid>.db)
and every /metrics scrape merges all of them: a child restarted by a reload or a crash left
two more for the router's lifetime (3,000 files made a scrape 15 times slower). Their values
are added to counter_dead.db / histogram_dead.db (written with the client's own MmapedDict,
so the collector reads them as any process's) and the per-pid files are deleted, under a
lock the collector takes too: a scrape never sees a value in both files or in neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from prometheus_client.mmap_dict import MmapedDict

LOCK = "dead.lock"  # not *.db: the collector's listing skips it
FOLDED_TYPES = ("counter", "histogram")  # summed on merge; gauges go with mark_process_dead


@contextlib.contextmanager
def _locked(folder: str, mode: int) -> Iterator[None]:
    with open(os.path.join(folder, LOCK), "a+b") as lock:
        fcntl.flock(lock, mode)
        yield  # closing the file releases the lock


def reading(folder: str) -> contextlib.AbstractContextManager[None]:
    """Held by a scrape while it lists and reads the files."""
    return _locked(folder, fcntl.LOCK_SH)


def fold(pid: int, folder: str) -> None:
    """Add a dead process's counter and histogram values to the accumulated files, then
    delete its own. Counter and histogram samples (buckets, _sum, _count) all sum."""
    with _locked(folder, fcntl.LOCK_EX):
        for typ in FOLDED_TYPES:
            path = os.path.join(folder, f"{typ}_{pid}.db")
            try:
                if os.path.getsize(path) == 0:  # died as the client created it: no values
                    os.unlink(path)
                    continue
                values = MmapedDict.read_all_values_from_file(path)  # type: ignore[no-untyped-call]
            except FileNotFoundError:
                continue
            dead = MmapedDict(os.path.join(folder, f"{typ}_dead.db"))  # type: ignore[no-untyped-call]
            try:
                for key, value, _timestamp, _pos in values:
                    total = dead.read_value(key)[0]  # type: ignore[no-untyped-call]
                    dead.write_value(key, total + value, 0.0)  # type: ignore[no-untyped-call]
            finally:
                dead.close()  # type: ignore[no-untyped-call]
            os.unlink(path)
