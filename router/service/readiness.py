"""Whether the router takes work (/readyz), from the supervisor's children and the broker's
and acceptors' own reports."""

from __future__ import annotations

from pathlib import Path

from router.acceptor.admission import AcceptorState
from router.core.status_snapshots import read_snapshots
from router.service.acceptor_seats import AcceptorSeats
from router.service.child_process import Child


def readiness(children: list[Child], reloading: str | None, status_dir: Path,
              seats: AcceptorSeats) -> tuple[bool, str]:
    """Ready while the broker and every worker run, and at least one
    acceptor accepts: the kernel sends new connections only to acceptors that listen, and
    an acceptor being restarted has no listening socket."""
    # A worker a reload restarts on purpose is not down: the others deliver meanwhile.
    down = [c.name for c in children if not c.alive and c.name != reloading]
    pipeline_down = [name for name in down if not name.startswith("acceptor-")]
    if pipeline_down:
        return False, f"not running: {', '.join(pipeline_down)}"
    broker = read_snapshots(status_dir).get("broker", {})
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

