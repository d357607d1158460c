"""Idle memory of the default config: the router's processes right after start, no traffic.

The built-in config (`make run`: one folder destination) with only the ports and folders
moved into the bench's work dir; RSS summed over the supervisor and its children (shared
pages count once per process, as `ps` would add them up), and per process.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from loadtest.procwatch import _rss_bytes, process_tree
from loadtest.targets import LOCALHOST, _process, _router_bin, _wait_ready
from tests.dcmtk import free_ports

SETTLE_SECONDS = 3.0  # imports done, first status snapshots written


def _names(log: Path, supervisor: int) -> dict[int, str]:
    """pid -> the supervisor's name for it ("started broker (pid 123)")."""
    names = {supervisor: "supervisor"}
    for name, pid in re.findall(r"started (\S+) \(pid (\d+)\)", log.read_text(errors="replace")):
        names[int(pid)] = name
    return names


def _command(pid: int) -> str:
    """A process the supervisor did not name: multiprocessing's resource tracker, mostly."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return str(pid)
    return "resource-tracker" if "resource_tracker" in command else f"pid {pid}"


def idle_rss(work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_ports(2)
    config = work / "idle.yaml"
    config.write_text(
        f"listen: {{host: {LOCALHOST}, port: {port}}}\n"
        f"metrics: {{host: {LOCALHOST}, port: {metrics_port}}}\n"
        f"spool: {{path: {work / 'spool'}}}\n"
        f"destinations: {{received: {{type: folder, path: {work / 'received'}}}}}\n"
        "rules: [{name: store-everything, forward: [received]}]\n")
    log = work / "router.log"
    with _process([_router_bin(), "run", "--config", str(config)], log, cwd=work) as proc:
        _wait_ready(f"http://{LOCALHOST}:{metrics_port}/readyz", proc, 60, log)
        time.sleep(SETTLE_SECONDS)
        names = _names(log, proc.pid)
        per_process = {names.get(pid) or _command(pid): round(_rss_bytes(pid) / 1e6, 1)
                       for pid in process_tree(proc.pid)}
    return {"total_mb": round(sum(per_process.values()), 1), "processes": per_process}
