"""The router's runtime folder under TMPDIR, and the sweep of those a killed router left.

A router removes its folder (ZeroMQ sockets, metrics files, status snapshots) when it
stops. One killed with SIGKILL (the OOM killer, `kill -9`, a container's hard stop) cannot,
and under Kubernetes the /tmp emptyDir outlives a container's restart: a router in a crash
loop would leave a folder per restart until the pod is evicted for filling it. Each folder
holds an flock on its lock file for the supervisor's lifetime, and a router that starts
removes only the folders whose lock it can take: the kernel releases a lock when its holder
dies, whatever PID namespace either router runs in (two containers sharing a /tmp volume,
where a pid read in one /proc means nothing in the other). A folder without a lock file (an
older router's) falls back to its owner file: the supervisor's pid and the kernel's start
time of that pid, so that a reused pid is not taken for it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from router.core.process_identity import process_start

log = logging.getLogger(__name__)

PREFIX = "dicom-router-"
OWNER_FILE = "supervisor"  # "<pid> <start time in clock ticks after boot>"
UNKNOWN_START = "-"  # where /proc cannot be read
LOCK_FILE = "supervisor.lock"  # flock'd by the supervisor while it runs

# The lock on this process's own folder: kept open for the process's lifetime.
_held: list[int] = []


def create_runtime_dir(parent: Path | None = None) -> Path:
    """A new private folder for this run, naming this process as its supervisor."""
    # Short path: ZeroMQ ipc endpoints must fit in a Unix socket name (~100 bytes).
    directory = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    # Locked before the owner file exists: a sweep reads that first, so it never sees
    # this folder with an owner and without its lock. CLOEXEC: children do not hold it.
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held.append(fd)
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


_NO_LOCK_FILE = -1


def _take_lock(directory: Path) -> int | None:
    """The folder's lock, taken (its descriptor); None while another process holds it;
    _NO_LOCK_FILE for a folder an older router made without one."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _NO_LOCK_FILE
    except OSError:
        return None  # cannot tell: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


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
        lock = _take_lock(directory)
        if lock is None:
            continue  # its supervisor holds the lock: running (or it is this one)
        try:
            if lock is _NO_LOCK_FILE and _running(pid, started):
                continue  # an older router without a lock file, running
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
        finally:
            if lock is not _NO_LOCK_FILE:
                os.close(lock)
    if removed:
        log.warning("removed %d runtime folder(s) of routers that were killed without "
                    "stopping (%s*)", len(removed), parent / PREFIX)
    return removed
