"""What a full spool filesystem lacks: bytes or inodes.

ENOSPC reads "No space left on device" for both; with bytes free and no inode left an
operator looks at `df -h`, sees room, and is misled. `df -i` tells, and so do these.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# A commit creates a job file and now and then a journal segment; a delivery may write
# a marker or a dead letter: this many free inodes at least, whatever min_free_percent says.
MIN_FREE_INODES = 8


def inodes_exhausted(path: str | Path) -> bool:
    """True when the filesystem of `path` limits inodes, has (nearly) none left for us and
    has bytes free: an ENOSPC there came from the inodes."""
    try:
        disk = os.statvfs(path)
    except OSError:
        return False
    return (disk.f_files > 0 and disk.f_favail < MIN_FREE_INODES
            and disk.f_bavail * disk.f_frsize >= 1 << 20)


def describe_oserror(exc: OSError, path: str | Path) -> str:
    """`exc` as an operator should read it: ENOSPC says "no free inodes" when that is what
    ran out on the filesystem of `path`."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and inodes_exhausted(path):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"no free inodes on the spool's filesystem{where} (bytes are free: see df -i)"
    return str(exc)


def full_spool_comment(path: str | Path, *, receiving: bool = False) -> str:
    """The ErrorComment of a C-STORE refused (0xA700) because the spool filled up: says
    inodes when they are what ran out, so that a sender's log points at `df -i`."""
    what = "out of inodes" if inodes_exhausted(path) else "disk full"
    return f"spool {what}{' while receiving' if receiving else ''}; retry later"
