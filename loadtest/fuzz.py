"""The long run of the acceptor fuzzer: thousands of mutated real sessions at a router.

    python -m loadtest.fuzz --sessions 2000 [--seed 16] [--work-dir /tmp/dicom-router-fuzz]

Starts a router with short timeouts (the fuzz test's config), captures real sessions
(echoscu, storescu, pynetdicom) through a proxy, then replays mutations of them
(tests/integration/session_corpus.py) and prints, every 200 sessions, the acceptor's RSS,
threads and open files and the size of the router's log. At the end it checks what the CI
batch checks after each test: the acceptor never restarted, echoscu still gets through,
memory stayed within bounds, and the log holds no traceback and no line longer than the
router's bound. Exits 1 on any of these, with the seed to replay the run.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from tests.dcmtk import LOCALHOST, run_echoscu
from tests.integration import session_corpus
from tests.integration.router_process import RouterProcess
from tests.integration.test_fuzz_acceptor import (
    ACSE_TIMEOUT,
    NETWORK_TIMEOUT,
    fd_count,
    fuzz_config,
    rss_kb,
    thread_count,
)

RSS_GROWTH_LIMIT_KB = 64 * 1024
LONGEST_LOG_LINE = 2000 + 300  # router.log_safety.MAX_MESSAGE plus the line's prefix


def _status(router: RouterProcess, pid: int, done: int, started: float) -> str:
    log_kb = router.log_path.stat().st_size >> 10
    return (f"{done:6d} sessions  {time.monotonic() - started:6.0f} s  RSS {rss_kb(pid):7d} kB"
            f"  threads {thread_count(pid):4d}  fds {fd_count(pid):4d}  log {log_kb} kB")


def _problems(router: RouterProcess, pid: int, baseline_kb: int) -> list[str]:
    found = []
    if router.child_pid("acceptor-1") != pid:
        found.append("the acceptor was restarted: it crashed")
    echo = run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER", timeout=30)
    if echo.returncode != 0:
        found.append(f"echoscu failed after the run: {echo.stderr.strip()}")
    if rss_kb(pid) > baseline_kb + RSS_GROWTH_LIMIT_KB:
        found.append(f"acceptor RSS grew from {baseline_kb} to {rss_kb(pid)} kB")
    lines = router.log().splitlines()
    if any("Traceback" in line for line in lines):
        found.append("the log holds tracebacks")
    longest = max((len(line) for line in lines), default=0)
    if longest > LONGEST_LOG_LINE:
        found.append(f"a log line of {longest} characters")
    return found


def run(sessions: int, seed: int, work_dir: Path) -> int:
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    with RouterProcess(work_dir / "router", fuzz_config(work_dir)) as router:
        pid = router.child_pid("acceptor-1")
        corpus = session_corpus.capture(router.port, work_dir)
        time.sleep(ACSE_TIMEOUT + 1)
        baseline = rss_kb(pid)
        print(f"seed {seed}: {len(corpus)} captured sessions, acceptor RSS {baseline} kB")
        rng, kinds, peak = random.Random(seed), Counter[str](), baseline
        started = time.monotonic()
        for done in range(1, sessions + 1):
            names, data = session_corpus.mutate(rng.choice(corpus), rng)
            answer = session_corpus.replay(router.port, data, wait=0.1)
            kinds[f"{names.split('+')[0]} ({'closed' if answer.closed else 'open'})"] += 1
            peak = max(peak, rss_kb(pid))
            if done % 200 == 0 or done == sessions:
                print(_status(router, pid, done, started), flush=True)
        time.sleep(ACSE_TIMEOUT + NETWORK_TIMEOUT + 1)  # every attack's connection is over
        print(f"peak RSS {peak} kB; by mutation: {dict(sorted(kinds.items()))}")
        problems = _problems(router, pid, baseline)
        suppressed = router.metric_sum("dicom_router_log_suppressed_total")
        print(f"log lines suppressed as repeats: {suppressed:.0f}")
    for problem in problems:
        print(f"PROBLEM: {problem} (replay with --seed {seed})", file=sys.stderr)
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/dicom-router-fuzz"))
    args = parser.parse_args()
    sys.exit(run(args.sessions, args.seed, args.work_dir))


if __name__ == "__main__":
    main()
