"""CPU per instance of each router process: storescu x N into the default config.

    .venv/bin/python -m loadtest.cpu_split --size 10k --count 4000 --senders 1 --runs 3

Where the README's per-process figures come from ("Performance"): starts the router on its
default config in front of a storescp (--fork), sends `count` cached instances from
`senders` storescu, waits until the destination holds them all, and prints the rate and,
per router process (named from the router's /status), its user + system CPU per instance
over that span. One line per run. To compare two trees, run it in each in turn, several
times (this machine's noise is +-20% between runs; interleaved pairs are what the README
quotes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import urllib.request
from pathlib import Path

from loadtest.bench import DEFAULT_WORK
from loadtest.data import SIZES, dataset
from loadtest.peers import send, wait_delivered
from loadtest.procwatch import _read_stat, process_tree
from loadtest.targets import CaseEnv, router_default


def _cpu(pid: int) -> float:
    stat = _read_stat(pid)
    return stat[1] if stat is not None else 0.0


def _names(metrics_url: str | None) -> dict[int, str]:
    """pid -> process name (acceptor-1, broker, worker-0, ...) from the router's /status."""
    if metrics_url is None:
        return {}
    url = metrics_url.rsplit("/", 1)[0] + "/status"
    with urllib.request.urlopen(url, timeout=5) as reply:
        status = json.loads(reply.read())
    return {row["pid"]: row["name"] for row in status.get("processes", []) if row.get("pid")}


def one_run(size: str, count: int, senders: int, work: Path) -> str:
    data = dataset(DEFAULT_WORK / "data", SIZES[size], count)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = CaseEnv(work / "case", work / "case" / "dest", None)
    env.workdir.mkdir(parents=True)
    with router_default(env) as endpoint:
        assert endpoint.pid is not None
        time.sleep(1.0)  # the workers finish starting
        pids = process_tree(endpoint.pid)
        names = _names(endpoint.metrics_url)
        before = {pid: _cpu(pid) for pid in pids}
        started = time.monotonic()
        run = send(data.split(senders), data.contexts, endpoint.port, endpoint.called_ae,
                   work / "send")
        done = wait_delivered(env.dest_dir, count, 0, time.monotonic() + 300)
        elapsed = time.monotonic() - started
        per = {pid: (_cpu(pid) - before[pid]) * 1000 / count for pid in pids}
    shutil.rmtree(work, ignore_errors=True)
    if run.failures or run.errors or done is None:
        return f"failed: {run.failures} failures, {'; '.join(run.errors)[:200]}"
    split = ", ".join(f"{names.get(pid, pid)} {ms:.3f}"
                      for pid, ms in sorted(per.items(), key=lambda item: -item[1])
                      if ms >= 0.005)
    return (f"{count} x {size} from {senders} sender(s): {count / elapsed:.0f}/s; CPU ms per "
            f"instance {sum(per.values()):.3f} ({split})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="10k")
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    for run in range(args.runs):
        line = one_run(args.size, args.count, args.senders, DEFAULT_WORK / "cpu-split")
        print(f"run {run + 1}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
