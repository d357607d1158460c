"""Which upstream took an N-CREATE, so that the instance's later N-requests go there first.

A rule may list several upstreams (`query: [ris1, ris2]`): each request goes to the first
that answers. An MPPS created on ris2 while ris1 was down must be set on ris2, not on ris1
once it is back (it answers 0x0112, No Such Object Instance, and the step never completes).
Any worker may relay the N-SET, and it may come after a restart, so the choice is a file on
the spool: `<spool>/n-instances/<sha256 of the SOP Instance UID>` holding the upstream's
name (the UID itself never names a file: it comes from the network). Kept MAX_AGE_SECONDS
(a procedure step may run for hours) and at most MAX_ENTRIES, the oldest removed first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

MAX_AGE_SECONDS = 7 * 24 * 3600.0
MAX_ENTRIES = 20_000
SWEEP_SECONDS = 600.0  # how often a worker removes entries past their age or the bound
FOLLOWERS = frozenset({"N-SET", "N-GET", "N-DELETE", "N-ACTION", "N-EVENT-REPORT"})


class UpstreamAffinity:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._swept = -SWEEP_SECONDS

    def _path(self, uid: str) -> Path:
        return self.folder / hashlib.sha256(uid.encode()).hexdigest()

    def remember(self, uid: str, upstream: str) -> None:
        """An N-CREATE of this instance succeeded on `upstream` (fsync'd: the N-SET may come
        after a crash)."""
        if not uid:
            return
        path = self._path(uid)
        # Unique across hosts too: cells sharing the folder may have the same pids.
        draft = path.with_name(f".{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex}")
        try:
            with open(draft, "w") as fh:
                fh.write(upstream)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(draft, path)
            self._sweep()
        except OSError as exc:  # the N-CREATE was answered: its followers try in order
            log.warning("cannot remember which upstream took an N-CREATE: %s", exc)

    def order(self, command: str, uid: str, upstreams: list[str]) -> list[str]:
        """The upstreams to try, the one that took this instance's N-CREATE first."""
        if command not in FOLLOWERS or not uid:
            return upstreams
        path = self._path(uid)
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime < MAX_AGE_SECONDS:
                first = path.read_text()
                if first in upstreams:
                    return [first, *(u for u in upstreams if u != first)]
        return upstreams

    def _sweep(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._swept < SWEEP_SECONDS:
                return
            self._swept = now
        entries: list[tuple[float, Path]] = []
        for path in self.folder.iterdir():
            with contextlib.suppress(OSError):
                entries.append((path.stat().st_mtime, path))
        entries.sort()
        cutoff = time.time() - MAX_AGE_SECONDS
        excess = len(entries) - MAX_ENTRIES
        for n, (mtime, path) in enumerate(entries):
            if mtime < cutoff or n < excess:
                path.unlink(missing_ok=True)
