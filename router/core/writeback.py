"""Start the kernel writing a file's dirty pages to disk without waiting for it (Linux
`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that the fsync at the end of a large write
finds most of the file on disk already.

A 50 MB instance written in 256 KB pieces and then fsync'd spent 25-27 ms in the fsync on
the bench machine; kicking writeback every 8 MiB while it arrived left 5-15 ms. No
durability is claimed by this: the fsync still decides. Where the call does not exist
(not Linux, no libc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

SYNC_FILE_RANGE_WRITE = 2
KICK_BYTES = 8 * 1024 * 1024  # how much unsynced data a writer lets pile up


def _load() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _load()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask for [offset, offset + length) to be written out now; never blocks on the disk
    (beyond queueing), never raises."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)
