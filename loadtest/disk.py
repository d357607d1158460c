"""The spool disk's durable write bandwidth: what store-and-forward cannot beat.

A router that acknowledges only durable instances writes each one and fsyncs it before the
Success: so the disk's rate of fsync'd writes of the benchmark's sizes bounds it, whatever the
wire allows. Measured on the filesystem of the bench's work dir (the router's spool) in the
same run, and the router's rate reported as a fraction of it (report.py, "x disk").

A shared host's disk can swing by a factor of three within minutes (2026-12-06: 280-1,200
MB/s for 50 MB in one hour, and once 384 MB/s while the floor case then wrote 790 durably),
so the bench measures before every round and takes the median (`median_of`), with every
measure kept beside it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

# Files per size: a few hundred MB at most, a few seconds each on a slow disk.
_FILES = {"10k": 2000, "0.5m": 400, "50m": 6}
_CHUNK = 1 << 20


def _write_fsynced(path: Path, size: int, chunk: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left:
            left -= os.write(fd, chunk[: min(left, len(chunk))])
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_bandwidth(folder: Path, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """{size: {"inst_per_s", "mb_per_s", "files"}} for fsync'd writes of each size, one file
    at a time (a durable instance is a write and an fsync; the renames and job records that
    come with it are the router's own cost)."""
    folder.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(_CHUNK)
    results: dict[str, dict[str, Any]] = {}
    for name, size in sizes.items():
        count = _FILES.get(name, max(4, (256 << 20) // max(size, 1)))
        paths = [folder / f"disk-{name}-{i}.bin" for i in range(count)]
        t0 = time.monotonic()
        for path in paths:
            _write_fsynced(path, size, chunk)
        elapsed = max(time.monotonic() - t0, 1e-9)
        for path in paths:
            path.unlink(missing_ok=True)
        results[name] = {"files": count, "inst_per_s": round(count / elapsed, 1),
                         "mb_per_s": round(count * size / elapsed / 1e6, 1)}
    return results


def median_of(measures: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per size, the measure of median rate among `measures` (one per round), with the
    rates of all of them in "measures_mb_per_s"."""
    out: dict[str, dict[str, Any]] = {}
    for name in measures[0] if measures else {}:
        ranked = sorted((m[name] for m in measures), key=lambda d: d["inst_per_s"])
        out[name] = {**ranked[(len(ranked) - 1) // 2],
                     "measures_mb_per_s": [m[name]["mb_per_s"] for m in measures]}
    return out
