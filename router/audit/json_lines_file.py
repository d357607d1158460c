"""The audit trail's JSON lines file: whole-line appends that survive log rotation."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def open_for_append(path: Path) -> int:
    """The file's descriptor for appending, the file (0640) and its folders made if missing."""
    if not path.parent.exists():  # a parent that is a file fails below, with ENOTDIR
        path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def check_writable(path: Path) -> None:
    """Open (creating) the file as the trail will, and close it: raises the OSError that
    would otherwise lose every message once the router runs."""
    os.close(open_for_append(path))


class JsonLinesFile:
    """Appends whole lines with one write each (O_APPEND), reopening after log rotation."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self._fd: int | None = None
        self._lock = threading.Lock()

    def append(self, line: str) -> None:
        """One whole line, or an OSError and nothing: a full disk can take part of a line
        (a short write, then ENOSPC), and a torn line glues the next one to it, so the
        file is cut back to where it was."""
        data = (line + "\n").encode("utf-8")
        with self._lock:
            fd = self._current_fd()
            start = os.fstat(fd).st_size  # O_APPEND: where this line begins
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                self._cut_back(fd, start, len(data) - len(view))
                raise
            if self.fsync:
                os.fsync(fd)

    @staticmethod
    def _cut_back(fd: int, start: int, written: int) -> None:
        """Remove the `written` bytes of a line cut short at `start`, unless the file grew
        past them meanwhile (another process's whole line is never cut)."""
        with contextlib.suppress(OSError):
            if written and os.fstat(fd).st_size == start + written:
                os.ftruncate(fd, start)

    def _current_fd(self) -> int:
        if self._fd is not None:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except OSError:
                same = False  # moved away or deleted: start a new file
            if same:
                return self._fd
            self._close_fd()
        self._fd = open_for_append(self.path)
        return self._fd

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._close_fd()
