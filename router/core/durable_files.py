"""Writing files so that they survive a crash: an fsync by path, and a whole-or-nothing
replace. Used by the spool and by anything that keeps state on its disk."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write to a temp name beside `path`, fsync, and rename over it: never a torn file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # 0600 as the instances: job headers and dead-letter records name SOP instances.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk leaves no half-written temp behind
            tmp.unlink(missing_ok=True)
        raise
