"""Profile the router under load with py-spy: where do its processes spend their time?

    .venv/bin/python -m pip install py-spy
    .venv/bin/python -m loadtest.profile --size 0.5m --senders 4 --seconds 15 [--tuned]

Starts the router (default or tuned config) in front of a storescp, keeps `senders`
storescu sending the cached data set in a loop, records every router process with
`py-spy record --format raw` (collapsed stacks, idle threads excluded), and prints the
functions with the most samples (self and inclusive) per process. The raw stacks and a
flame graph (SVG) of each process stay in --out.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from loadtest.bench import DEFAULT_WORK
from loadtest.data import SIZES, dataset
from loadtest.peers import make_tls, send
from loadtest.procwatch import process_tree
from loadtest.targets import CaseEnv, router_default, router_tuned

PY_SPY = Path(sys.executable).parent / "py-spy"


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return "?"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/<pid>/stat, clock ticks)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _role(raw: Path) -> str:
    """Which router process a recording is (spawned children all share one command line)."""
    text = raw.read_text(errors="replace") if raw.exists() else ""
    for marker, role in (("acceptor/", "acceptor"), ("broker/main.py", "broker"),
                         ("workers/main.py", "worker"), ("service/supervisor.py", "supervisor"),
                         ("resource_tracker", "resource tracker")):
        if marker in text:
            return role
    return "?"


def _top(raw: Path, n: int = 12) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [re.sub(r" \(.*?/(site-packages/)?", " (", f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames[1:]):
            inclusive[frame] += int(count)
    lines = [f"    {total} samples (active threads only)", "    self:"]
    lines += [f"      {c / total:6.1%}  {f}" for f, c in own.most_common(n)] if total else []
    lines += ["    inclusive:"]
    lines += [f"      {c / total:6.1%}  {f}" for f, c in inclusive.most_common(n)] if total else []
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5m", choices=list(SIZES))
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tuned", action="store_true")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/profile"))
    args = parser.parse_args(argv)
    if not PY_SPY.exists() and shutil.which("py-spy") is None:
        raise SystemExit("py-spy missing: .venv/bin/python -m pip install py-spy")
    spy = str(PY_SPY) if PY_SPY.exists() else "py-spy"
    work = DEFAULT_WORK / "profile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    data = dataset(DEFAULT_WORK / "data", SIZES[args.size], args.count)
    tls = make_tls(DEFAULT_WORK / "tls") if args.tls else None
    env = CaseEnv(work / "case", work / "case" / "dest", tls)
    env.workdir.mkdir(parents=True)
    case = router_tuned if args.tuned else router_default
    with case(env) as endpoint:
        assert endpoint.pid is not None

        def load() -> None:
            # One pass over fresh UIDs (repeats would be skipped by the duplicate ledger):
            # --count must last longer than --seconds + 2.
            send(data.split(args.senders), data.contexts, endpoint.port,
                 endpoint.called_ae, work / "send", tls=tls)
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(2)
        pids = process_tree(endpoint.pid)
        spies = []
        cpu_before = {pid: _cpu_seconds(pid) for pid in pids}
        started = time.monotonic()
        for pid in pids:
            raw = args.out / f"{pid}.txt"
            spies.append((pid, _name(pid), raw, subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(args.seconds),
                 "--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        for *_, proc in spies:
            proc.wait(timeout=args.seconds + 60)
        elapsed = time.monotonic() - started
        cpu = {pid: (_cpu_seconds(pid) - before) / elapsed for pid, before in cpu_before.items()}
        loader.join(timeout=120)
    for pid, name, raw, _ in spies:
        print(f"pid {pid} ({_role(raw)}): {name} ({raw}); CPU {cpu[pid]:.0%} of a core "
              "(py-spy included)")
        if raw.exists():
            print("\n".join(_top(raw)))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
