"""Whether the router takes work (/readyz), from the supervisor's children and the broker's
and acceptors' own reports.

A process that runs is not necessarily a process that works: a broker stuck in a deadlock
or a hung fsync is alive, yet every C-STORE then waits listen.submit_timeout and gets 0xA700.
So the broker's live snapshot (written every PUBLISH_SECONDS) must also be fresh."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from router.acceptor.admission import AcceptorState
from router.core import metrics
from router.core.status_snapshots import STALE_SECONDS, read_snapshots
from router.service.acceptor_seats import AcceptorSeats
from router.service.child_process import Child

# The broker's snapshot older than this (ten of its publish periods, the same threshold as
# the status screen's "has not reported for a while") makes the router not ready.
BROKER_SILENT_SECONDS = STALE_SECONDS


def readiness(children: list[Child], reloading: str | None, status_dir: Path,
              seats: AcceptorSeats) -> tuple[bool, str]:
    """Ready while the broker and every worker run, the broker reports, and at least one
    acceptor accepts: the kernel sends new connections only to acceptors that listen, and
    an acceptor being restarted has no listening socket."""
    # A worker a reload restarts on purpose is not down: the others deliver meanwhile.
    down = [c.name for c in children if not c.alive and c.name != reloading]
    pipeline_down = [name for name in down if not name.startswith("acceptor-")]
    if pipeline_down:
        return False, f"not running: {', '.join(pipeline_down)}"
    broker = read_snapshots(status_dir).get("broker", {})
    silent = _broker_silence(broker)
    if silent is not None:
        return False, f"the broker has not reported for {silent:.0f} s (hung?)"
    # A worker process that runs may still be importing: until one has told the broker
    # it is ready, a relayed query or retrieve would be refused (0xA700, "no router
    # worker available"), which a C-FIND right after start met under load.
    if not broker.get("workers"):
        return False, "no worker is connected to the broker (starting, or all stalled)"
    states = seats.all_states()
    if AcceptorState.ACCEPTING not in states:
        # The disk and the queue are the same for all: the first reason says it.
        reasons = [s for s in states if s != AcceptorState.STARTING]
        return False, AcceptorState.MESSAGES[reasons[0] if reasons
                                             else AcceptorState.STARTING]
    if down:
        return True, f"ready; not running: {', '.join(down)}"
    return True, AcceptorState.MESSAGES[AcceptorState.ACCEPTING]


def heeds_sighup(child: Child, snapshots: dict[str, Any]) -> bool:
    """Whether `child`'s current process has its own SIGHUP handler in place: it has reported
    since it started (broker and acceptors write their snapshots, a worker connects to the
    broker, each only after installing its handler)."""
    pid = child.process.pid if child.process is not None else None
    if pid is None:
        return False
    if child.name.startswith("worker-"):
        return any(f"-{pid}-" in str(w) for w in snapshots.get("broker", {}).get("worker_ids", ()))
    return bool(snapshots.get(child.name, {}).get("pid") == pid)


def _broker_silence(broker: dict[str, Any]) -> float | None:
    """Seconds since the broker's last snapshot when that is too long, else None (also
    when it has written none yet: it is starting, and no worker is connected either)."""
    if "updated" not in broker:
        return None
    age = max(0.0, time.time() - float(broker["updated"]))
    metrics.BROKER_REPORT_AGE.set(age)
    return age if age > BROKER_SILENT_SECONDS else None
