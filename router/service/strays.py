"""Reaping the processes the supervisor did not start: as PID 1 of a container (the image's
ENTRYPOINT, no init) every orphan of the pod is reparented to it, such as a codec process
whose worker was killed, and each would stay a zombie for the router's lifetime.

Only zombies are reaped, one pid at a time, and never one of the supervisor's own
multiprocessing children: their exit status belongs to their Process objects (exitcode)."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def _children() -> set[int]:
    """This process's children, from every thread's /proc children list (a child belongs
    to the thread that forked it; an orphan to the thread group's leader)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").glob("*"):
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue  # a thread that just ended
    return pids


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] == "Z"


def reap_strays(own: Iterable[int | None]) -> list[int]:
    """Reap the zombie children whose pid is not in `own` nor a live multiprocessing child;
    the pids reaped."""
    # Called first: it collects the exit status of those of its children that ended, and
    # one ending after it is still in the set, so never reaped here.
    known = {pid for pid in own if pid} | {p.pid for p in multiprocessing.active_children()}
    reaped = []
    for pid in sorted(_children() - known):
        if not _is_zombie(pid):
            continue
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append(pid)
            log.debug("reaped process %d, not one of the router's (exit status %d)", pid,
                     os.waitstatus_to_exitcode(status))
    return reaped
