"""One C-STORE's dataset, written to a Part 10 file in the spool's incoming/ as its PDVs
arrive: preamble and file meta first (so that the spool keeps Part 10 files, as pynetdicom's
chunked receive wrote them), then every fragment as it comes, never the whole dataset in
memory.

Past `limit` bytes the rest is received into nothing and the file is marked `truncated`; a
full disk marks it `disk_full` and the rest is received into nothing too. Either way the
sender gets its answer (0xC003, 0xA700) instead of an abort, and nothing cut is kept.

The file is a settled job's, written over, when the spool's recycle/ has one
(router/core/recycling.py): what is left of the old content past the new end is cut off
before the sync.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
from pathlib import Path

from router.core import metrics
from router.core.owned_names import incoming_name
from router.core.recycling import FileRecycler
from router.core.writeback import KICK_BYTES, start_writeback
from router.dicom.dataset_identity import IDENTITY_HEAD

log = logging.getLogger(__name__)

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
PREAMBLE = b"\0" * 128 + b"DICM"
_SHORT = struct.Struct("<HH2sH")  # tag, VR, 2-byte length (UI, SH, UL)
_LONG = struct.Struct("<HH2s2xI")  # tag, VR, reserved, 4-byte length (OB)
_MAX_TEXT = 64  # UIDs and SH are at most 64 characters; anything longer is not a valid value
IOV_BATCH = 512  # buffers per writev, well under Linux's IOV_MAX (1024)


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")[:_MAX_TEXT]
    return raw + pad if len(raw) % 2 else raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str,
              implementation_class_uid: str, implementation_version: str) -> bytes:
    """Preamble, "DICM" and the group-0002 elements (Explicit VR Little Endian, PS3.10 7.1)."""
    elements = [
        _LONG.pack(2, 0x0001, b"OB", 2) + b"\x00\x01",
        *(_SHORT.pack(2, element, b"UI", len(value)) + value for element, value in (
            (0x0002, _text(sop_class, b"\0")), (0x0003, _text(sop_instance, b"\0")),
            (0x0010, _text(transfer_syntax, b"\0")),
            (0x0012, _text(implementation_class_uid, b"\0")))),
    ]
    version = _text(implementation_version, b" ")
    elements.append(_SHORT.pack(2, 0x0013, b"SH", len(version)) + version)
    body = b"".join(elements)
    return PREAMBLE + _SHORT.pack(2, 0x0000, b"UL", 4) + struct.pack("<I", len(body)) + body


class StoreReceiver:
    def __init__(self, folder: Path, meta: bytes, limit: int | None,
                 recycler: FileRecycler | None = None) -> None:
        self.path = folder / incoming_name()
        self.limit = limit
        self.received = 0  # dataset bytes, whether written or not
        self.truncated = False
        self.disk_full = False
        self.synced = False  # finish() made the file's bytes durable
        self.head = bytearray()  # the dataset's first IDENTITY_HEAD bytes (dataset_identity.py)
        reused = recycler.reuse(self.path) if recycler is not None else None
        if reused is None:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                           0o600)
            self._stale = 0
        else:
            self._fd, self._stale = reused  # the old content's length, written over
            metrics.SPOOL_FILES_REUSED.inc()
        self._offset = 0  # bytes in the file
        self._kicked = 0  # bytes the kernel was asked to write out already
        self._write([meta])

    def write_parts(self, parts: list[bytes | memoryview]) -> None:
        """Adjacent fragments of the dataset, in one `writev` (fragment_runs.py)."""
        self.received += sum(len(part) for part in parts)
        if len(self.head) < IDENTITY_HEAD:
            for part in parts:
                self.head += part[:IDENTITY_HEAD - len(self.head)]
                if len(self.head) >= IDENTITY_HEAD:
                    break
        if self._fd is None:
            return
        if self.limit is not None and self.received > self.limit:
            self.truncated = True
            self._stop_writing()
            return
        self._write(parts)

    def _write(self, parts: list[bytes | memoryview]) -> None:
        assert self._fd is not None
        queue = [memoryview(part) for part in parts if len(part)]
        try:
            while queue:
                written = os.writev(self._fd, queue[:IOV_BATCH])
                if written <= 0:
                    raise OSError(errno.EIO, "the spool file took no bytes")
                self._offset += written
                done = 0
                while done < len(queue) and written >= len(queue[done]):
                    written -= len(queue[done])
                    done += 1
                queue = queue[done:]
                if written:
                    queue[0] = queue[0][written:]  # a short write: the rest of that part
            if self._offset - self._kicked >= KICK_BYTES:  # a large dataset: the final
                start_writeback(self._fd, self._kicked, self._offset - self._kicked)  # fsync
                self._kicked = self._offset  # then finds most of it on disk
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                self.discard()
                raise
            log.warning("spool disk full while receiving a C-STORE; it will be answered 0xA700")
            self.disk_full = True
            self._stop_writing()

    def _stop_writing(self) -> None:
        """Keep nothing of a dataset that will not be kept: free its space at once."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
            self._offset = 0

    @property
    def size(self) -> int:
        """The file's length: file meta and the dataset as written (0 once given up)."""
        return self._offset

    def finish(self) -> Path:
        """The last fragment is in: the file is synced (`synced`: what the spool's commit
        would otherwise do, through a descriptor of its own) and closed."""
        if self._fd is not None:
            if self._offset < self._stale:
                try:
                    os.ftruncate(self._fd, self._offset)  # the old content's tail
                except OSError as exc:  # keeping it would keep a damaged instance
                    log.error("cannot cut a reused spool file to its new length (%s); the "
                              "C-STORE will be answered 0xA700", exc)
                    self.disk_full = True
                    self._stop_writing()
                    return self.path
            try:
                os.fsync(self._fd)
                self.synced = True
            except OSError as exc:  # the commit syncs again, and fails the C-STORE for it
                log.warning("syncing a received C-STORE failed: %s", exc)
            os.close(self._fd)
            self._fd = None
        return self.path

    def discard(self) -> None:
        """The association ended before the dataset did: nothing of it is left behind."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
