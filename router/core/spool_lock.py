"""One router per spool: the supervisor holds an exclusive lock on `<spool>/router.lock`
for its whole run, and every child of it a shared lock on `<spool>/children.lock`.

Two routers on one spool (a copied config that kept `spool.path`, a second pod on a shared
volume) each recover, recycle and compact what the other is writing: a second start
removed the first one's live journal segment, and a job the first had acknowledged was gone
after its restart. The kernel releases an flock when its holder dies, so a router killed
with -9 never leaves its spool locked.

A supervisor killed alone (kill -9 of its pid, not of its group) leaves its children
running until they notice and drain (up to drain_grace for an acceptor with associations):
router.lock is free then, yet they still write into the spool. So a starting supervisor,
once it holds router.lock, waits until nobody holds children.lock, bounded by the previous
supervisor's stop grace (written in router.lock) plus STALE_CHILD_MARGIN; past it, it exits
naming the pids. Why no child of the old router can slip in after that check: a child
takes its shared lock first, and only then checks that the supervisor that spawned it is
still its parent (it exits otherwise). If that check passed, the old supervisor was alive
after the child's lock was taken, so the new supervisor got router.lock later and its check
sees the child's lock. If it failed, the child leaves without touching the spool.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from router.core.errors import RouterError

LOCK_NAME = "router.lock"
CHILDREN_LOCK_NAME = "children.lock"
# Added to the previous supervisor's stop grace: its orphans notice within a second or two.
STALE_CHILD_MARGIN = 10.0
_POLL_SECONDS = 0.2

log = logging.getLogger(__name__)


class SpoolInUse(RouterError):
    pass


class SpoolUnwritable(RouterError):
    pass


def _unwritable(root: Path, path: Path, exc: OSError) -> SpoolUnwritable:
    """An operator message naming the spool and the file: the bare OSError of a write on a
    descriptor names neither."""
    hint = ("free space on its volume and start again" if exc.errno in (errno.ENOSPC,
                                                                         errno.EDQUOT)
            else "check the volume and its permissions")
    return SpoolUnwritable(f"cannot write {path.name} in spool {root} (spool.path): "
                           f"{exc.strerror or exc}; {hint}")


@dataclass(frozen=True)
class Tenancy:
    """What a child needs to join its supervisor's spool (picklable: spawn sends it)."""

    root: Path
    supervisor: int  # the pid of the supervisor that spawned the child


def hold_spool(root: Path, stop_grace: float) -> tuple[int, float]:
    """Lock the spool for this process: the descriptor to keep open, and the stop grace the
    previous holder wrote (`stop_grace`, ours, when it wrote none). Raises SpoolInUse naming
    the holder's pid when another router has it."""
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _unwritable(root, path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = "unknown"
        with contextlib.suppress(OSError, ValueError, IndexError):
            holder = str(int(os.pread(fd, 64, 0).decode().split()[0]))
        os.close(fd)
        raise SpoolInUse(
            f"spool {root} (spool.path) is in use by another router (pid {holder}): two "
            "routers on one spool would take each other's jobs; give each its own "
            "spool.path") from None
    previous = stop_grace
    with contextlib.suppress(OSError, ValueError, IndexError):
        previous = float(os.pread(fd, 64, 0).decode().split()[1])
    # Written over, then cut to its length: emptied first, a write the disk refused left
    # no pid for the next start to name.
    mine = f"{os.getpid()}\n{stop_grace}\n".encode()
    try:
        os.pwrite(fd, mine, 0)
        os.ftruncate(fd, len(mine))
    except OSError as exc:
        os.close(fd)
        raise _unwritable(root, path, exc) from None
    return fd, previous


def await_old_children(root: Path, bound: float, stop: threading.Event) -> bool:
    """Return once no process of an earlier router holds children.lock (False if `stop` was
    set meanwhile); SpoolInUse naming them after `bound` seconds. Call while holding
    router.lock, before touching the spool."""
    fd = os.open(root / CHILDREN_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + bound
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break  # released at close: our own children share it next
            except BlockingIOError:
                pids = ", ".join(map(str, lock_holders(fd))) or "unknown"
            if time.monotonic() >= deadline:
                raise SpoolInUse(
                    f"processes of an earlier router (pids {pids}) still use spool {root} "
                    f"after {bound:.0f} s: its supervisor died without them. Stop them "
                    f"(kill {pids.replace(',', '')}) and start the router again") from None
            if not waited:
                log.warning("waiting up to %.0f s for the processes of an earlier router "
                            "(pids %s) to stop using spool %s", bound, pids, root)
                waited = True
            if stop.wait(_POLL_SECONDS):
                return False
        if waited:
            log.info("the earlier router's processes are gone; starting")
        return True
    finally:
        os.close(fd)


def join_spool(tenancy: Tenancy) -> int | None:
    """In a child, before it touches the spool: share children.lock; the descriptor to keep
    open, or None when the supervisor that spawned it is gone (the child must leave)."""
    fd = os.open(tenancy.root / CHILDREN_LOCK_NAME,
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a starting supervisor's brief check
    if os.getppid() != tenancy.supervisor:  # only after the lock: see the module's doc
        os.close(fd)
        return None
    return fd


def lock_holders(fd: int) -> list[int]:
    """The pids holding an flock on `fd`'s file, from /proc/locks (empty if unknown)."""
    stat = os.fstat(fd)
    # /proc/locks names a file as MAJOR:MINOR:INODE, the first two in hex.
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                continue
            if fields[5] == file_id and fields[4].isdigit():
                pids.add(int(fields[4]))
    return sorted(pids)
