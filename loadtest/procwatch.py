"""CPU seconds and summed RSS of a process tree, read from /proc.

A ProcessWatch samples the tree of one root pid (the process itself and every
descendant, found through the ppid field of /proc/<pid>/stat) every ~100 ms in a
background thread: RSS summed over the tree (peak and time series) and utime+stime
per pid, so the CPU of a phase is the difference between two snapshots.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read_stat(pid: int) -> tuple[int, float, float] | None:
    """(ppid, cpu seconds of pid itself, cpu seconds of its reaped children) or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fp:
            raw = fp.read().decode()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime) / _TICKS, (cutime + cstime) / _TICKS


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fp:
            return int(fp.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages divided among the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fp:
            for line in fp:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def process_tree(root: int) -> list[int]:
    """root and all its descendants that exist now."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None:
            parents.setdefault(stat[0], []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def tree_rss(root: int) -> int:
    return sum(_rss_bytes(pid) for pid in process_tree(root))


@dataclass
class ProcessWatch:
    """Samples RSS (summed) and CPU (per pid) of a tree until stopped."""

    root: int
    interval: float = 0.1
    peak_rss: int = 0
    peak_pss: int = 0
    last_pss: int = 0
    with_pss: bool = True
    samples: list[tuple[float, int]] = field(default_factory=list)
    _cpu: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ProcessWatch:
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="procwatch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        rss = pss = 0
        pids = process_tree(self.root)
        with self._lock:
            for pid in pids:
                stat = _read_stat(pid)
                if stat is None:
                    continue
                # Own CPU only: a child reaped mid-run would otherwise count twice
                # (its last sample here and its parent's cutime).
                self._cpu[pid] = stat[1]
                rss += _rss_bytes(pid)
                pss += _pss_bytes(pid) if self.with_pss else 0
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.last_pss = pss
            self.samples.append((time.time(), rss))

    def cpu_seconds(self) -> float:
        """CPU used by the tree so far (pids that vanished keep their last reading)."""
        with self._lock:
            return sum(self._cpu.values())

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_rss = self.peak_pss = 0
