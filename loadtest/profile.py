"""Profile the router under load with py-spy: where do its processes spend their time?

    .venv/bin/python -m pip install py-spy
    .venv/bin/python -m loadtest.profile --size 0.5m --senders 4 --seconds 15 [--tuned]

Starts the router (default or tuned config) in front of a storescp, keeps `senders`
storescu sending the cached data set in a loop, records every router process with
`py-spy record --format raw` (collapsed stacks, idle threads excluded), and prints the
functions with the most samples (self and inclusive) per process. The raw stacks and a
flame graph (SVG) of each process stay in --out.

`--gil` keeps only samples of a thread holding the GIL (Python's own CPU). `--perf` records
with Linux `perf` instead (kernel and native stacks, which py-spy cannot see) and prints per
process its split between the kernel, the interpreter and native libraries, and the system
calls it spends the most in: how the cost of creating files was found
(README, "Recycled files").
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


def _dumped_role(spy: str, pid: int) -> str:
    """A process's role from one py-spy dump of its stacks (the same markers as _role)."""
    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                          check=False).stdout
    raw = Path(f"/tmp/py-spy-dump-{pid}.txt")
    raw.write_text(dump)
    try:
        return _role(raw)
    finally:
        raw.unlink(missing_ok=True)


def _threads(pid: int) -> set[int]:
    try:
        return {int(task) for task in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def _perf_rows(perf_data: Path, *options: str) -> list[tuple[float, int, str]]:
    """(share of all samples, thread id, key) rows of `perf report --sort pid,<key>`; perf's
    own --pid/--tid filters drop most rows when sorting by object, so threads are summed
    here."""
    command = ["perf", "report", "-i", str(perf_data), "--stdio", "-g", "none", *options]
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    rows = []
    for line in out.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(?:[\d.]+%\s+)?(\d+):\S+\s+(.*\S)", line)
        if match:
            rows.append((float(match[1]), int(match[2]), match[3]))
    return rows


def _perf_top(perf_data: Path, threads: dict[int, set[int]], n: int = 10
              ) -> dict[int, list[str]]:
    """Per process: its samples by object (kernel, interpreter, libraries), then the system
    calls with the most (each with the kernel work under it)."""
    owner = {tid: pid for pid, tids in threads.items() for tid in tids}
    objects: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for share, tid, name in _perf_rows(perf_data, "--no-children", "--sort", "pid,dso"):
        if tid in owner:
            objects[owner[tid]][name] += share
    calls: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for share, tid, name in _perf_rows(perf_data, "--children", "--sort", "pid,sym"):
        if tid in owner and "__x64_sys_" in name:
            calls[owner[tid]][name.removeprefix("[k] ")] += share
    report = {}
    for pid in threads:
        total = sum(objects[pid].values()) or 1.0
        lines = ["    by object: " + ", ".join(
            f"{name} {share / total:.0%}" for name, share in objects[pid].most_common(5))]
        lines += ["    system calls (with their kernel work), share of the process:"]
        lines += [f"      {share / total:6.1%}  {name}"
                  for name, share in calls[pid].most_common(n)]
        report[pid] = lines
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5m", choices=list(SIZES))
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tuned", action="store_true")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--gil", action="store_true",
                        help="only samples of a thread holding the GIL: Python's own CPU")
    parser.add_argument("--perf", action="store_true",
                        help="record with Linux perf (kernel and native stacks), not py-spy")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/profile"))
    args = parser.parse_args(argv)
    if args.perf and shutil.which("perf") is None:
        raise SystemExit("perf missing: apt-get install linux-perf")
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
        if args.perf:
            roles = {pid: _dumped_role(spy, pid) for pid in pids}
            threads = {pid: _threads(pid) for pid in pids}
            perf_data = args.out / "perf.data"
            subprocess.run(["perf", "record", "-F", "499", "-g", "-o", str(perf_data),
                            "-p", ",".join(map(str, pids)), "--", "sleep", str(args.seconds)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            threads = {pid: threads[pid] | _threads(pid) for pid in pids}  # and newer ones
        for pid in pids if not args.perf else ():
            raw = args.out / f"{pid}.txt"
            spies.append((pid, _name(pid), raw, subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(args.seconds),
                 "--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking",
                 *(["--gil"] if args.gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        for *_, proc in spies:
            proc.wait(timeout=args.seconds + 60)
        elapsed = time.monotonic() - started
        cpu = {pid: (_cpu_seconds(pid) - before) / elapsed for pid, before in cpu_before.items()}
        loader.join(timeout=120)
    if args.perf:
        report = _perf_top(perf_data, threads)
        for pid in pids:
            print(f"pid {pid} ({roles[pid]}): CPU {cpu[pid]:.0%} of a core (perf included)")
            print("\n".join(report[pid]))
    for pid, name, raw, _ in spies:
        print(f"pid {pid} ({_role(raw)}): {name} ({raw}); CPU {cpu[pid]:.0%} of a core "
              "(py-spy included)")
        if raw.exists():
            print("\n".join(_top(raw)))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
