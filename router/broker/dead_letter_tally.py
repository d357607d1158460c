"""How many dead letters wait on the spool for each destination, for the status and the
`dicom_router_dead_letters_waiting` gauge.

`dicom_router_dead_letters_total` counts what was dead-lettered since the process started:
after a restart it read 0 while letters still waited to be replayed, and the status showed an
operator nothing to do. This counts the records in `<spool>/dead-letters/` (`<job
id>.<destination>.json`), which replay and purge remove from any process, every few seconds;
one the broker writes is counted at once (in memory), and an operator's action through the
broker makes the next look count again.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

REFRESH_SECONDS = 5.0


class DeadLetterTally:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._counts: dict[str, int] = {}
        self._at = float("-inf")

    def added(self, destination: str) -> None:
        """The broker wrote one: counted now (shown at the next heartbeat), without a scan
        per letter when thousands are written together."""
        self._counts[destination] = self._counts.get(destination, 0) + 1

    def stale(self) -> None:
        """An operator's replay or purge may have removed some: count at the next look."""
        self._at = float("-inf")

    def counts(self, now: float) -> dict[str, int]:
        if now - self._at >= REFRESH_SECONDS:
            self._at = now
            self._counts = self._scan()
        return self._counts

    def _scan(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    name = entry.name
                    if name.endswith(".json") and not name.startswith("."):
                        job, _, destination = name[:-5].partition(".")
                        if job and destination:
                            counts[destination] += 1
        except FileNotFoundError:
            pass
        return dict(counts)
