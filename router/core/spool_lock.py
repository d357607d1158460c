"""One router per spool: the supervisor holds an exclusive lock on `<spool>/router.lock`
for its whole run.

Two routers on one spool (a copied config that kept `spool.path`, a second pod on a shared
volume) each recover, recycle and compact what the other is writing: a second start
removed the first one's live journal segment, and a job the first had acknowledged was gone
after its restart. The kernel releases an flock when its holder dies, so a router killed
with -9 never leaves its spool locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from router.core.errors import RouterError

LOCK_NAME = "router.lock"


class SpoolInUse(RouterError):
    pass


def hold_spool(root: Path) -> int:
    """Lock the spool for this process; the descriptor to keep open. Raises SpoolInUse
    naming the holder's pid when another router has it."""
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = "unknown"
        with contextlib.suppress(OSError, ValueError):
            holder = str(int(os.pread(fd, 32, 0).decode().strip()))
        os.close(fd)
        raise SpoolInUse(
            f"spool {root} (spool.path) is in use by another router (pid {holder}): two "
            "routers on one spool would take each other's jobs; give each its own "
            "spool.path") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
