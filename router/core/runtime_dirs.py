"""The router's runtime folder under TMPDIR, and the sweep of those a killed router left.

A router removes its folder (ZeroMQ sockets, metrics files, status snapshots) when it
stops. One killed with SIGKILL (the OOM killer, `kill -9`, a container's hard stop) cannot,
and under Kubernetes the /tmp emptyDir outlives a container's restart: a router in a crash
loop would leave a folder per restart until the pod is evicted for filling it. Each folder
names its supervisor (pid and the kernel's start time of that pid, so that a reused pid
is not taken for it), and a router that starts removes the folders of supervisors that are
gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "dicom-router-"
OWNER_FILE = "supervisor"  # "<pid> <start time in clock ticks after boot>"
UNKNOWN_START = "-"  # where /proc cannot be read


def process_start(pid: int) -> str | None:
    """The start time the kernel gives `pid` (/proc/<pid>/stat field 22), None if no such
    process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces
    return fields[19] if len(fields) > 19 else None


def create_runtime_dir(parent: Path | None = None) -> Path:
    """A new private folder for this run, naming this process as its supervisor."""
    # Short path: ZeroMQ ipc endpoints must fit in a Unix socket name (~100 bytes).
    directory = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    pid = os.getpid()
    (directory / OWNER_FILE).write_text(f"{pid} {process_start(pid) or UNKNOWN_START}\n")
    return directory


def _running(pid: int, started: str) -> bool:
    if started == UNKNOWN_START:  # no /proc where it started: whether the pid lives at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process holds that pid: alive
        return True
    return process_start(pid) == started


def remove_stale_runtime_dirs(parent: Path | None = None) -> list[Path]:
    """Remove this user's runtime folders whose supervisor is gone; the ones removed.

    A folder without an owner file (another tool's, an older router's, one being created
    this instant) or that cannot be read is left alone.
    """
    parent = parent if parent is not None else Path(tempfile.gettempdir())
    removed = []
    for directory in parent.glob(f"{PREFIX}*"):
        try:
            if directory.is_symlink() or not directory.is_dir() or \
                    directory.stat().st_uid != os.getuid():
                continue
            pid_text, started = (directory / OWNER_FILE).read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if _running(pid, started):
            continue  # that router is running (or it is this one)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    if removed:
        log.warning("removed %d runtime folder(s) of routers that were killed without "
                    "stopping (%s*)", len(removed), parent / PREFIX)
    return removed
