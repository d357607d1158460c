"""Microbenchmark of the acceptor's ack path on the spool: Spool.commit alone (no network).

    .venv/bin/python -m loadtest.spool_commit [--count 2000] [--threads 1,4,16]
        [--size 10000] [--dir /tmp/dicom-router-commit-bench]

For each thread count, T threads commit --count received files of --size bytes between them
(as T associations would) and it prints commits/s and the fsync + fdatasync calls per commit
(counted by wrapping os.fsync and os.fdatasync). Put --dir on the spool's filesystem: an
fsync costs what that disk makes it cost. The machine's other load shows in the rates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from router.core.messages import JobHeader
from router.core.spool import Spool, new_job_id

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


class SyncCounter:
    """Counts os.fsync and os.fdatasync calls while installed (any thread)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self._real = (os.fsync, os.fdatasync)

    def _wrap(self, real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            with self._lock:
                self.calls += 1
            real(fd)
        return sync

    def __enter__(self) -> SyncCounter:
        os.fsync, os.fdatasync = self._wrap(self._real[0]), self._wrap(self._real[1])
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync, os.fdatasync = self._real


def header(size: int) -> JobHeader:
    job_id = new_job_id()
    return JobHeader(job_id=job_id, calling_ae="BENCH", called_ae="DICOM-ROUTER",
                     peer_address="127.0.0.1", peer_port=40000, sop_class_uid=CT,
                     sop_instance_uid=f"1.2.826.0.1.3680043.10.1.{int(job_id[:16], 16)}",
                     transfer_syntax_uid=EXPLICIT_LE, size=size, received_at=time.time(),
                     rules=("all",), destinations=("pacs",))


def run(root: Path, count: int, threads: int, size: int) -> tuple[float, float]:
    """(commits per second, syncs per commit) for `threads` committing `count` in all."""
    shutil.rmtree(root, ignore_errors=True)
    spool = Spool(root).create()
    payload = os.urandom(size)
    each = count // threads

    def commit_some() -> None:
        for _ in range(each):
            received = spool.incoming / f"recv-{os.urandom(6).hex()}"
            received.write_bytes(payload)
            spool.commit(header(size), received)

    workers = [threading.Thread(target=commit_some) for _ in range(threads)]
    with SyncCounter() as counter:
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
    shutil.rmtree(root, ignore_errors=True)
    done = each * threads
    return done / elapsed, counter.calls / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--threads", default="1,4,16")
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/dicom-router-commit-bench"))
    args = parser.parse_args()
    print("| threads | commits | commits/s | fsync+fdatasync per commit |")
    print("|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        rate, syncs = run(args.dir, args.count, threads, args.size)
        print(f"| {threads} | {args.count // threads * threads} | {rate:,.0f} | {syncs:.2f} |")


if __name__ == "__main__":
    main()
