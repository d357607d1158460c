"""The collector behind /metrics and the console's figures: every process's metric files,
read by prometheus_client, tolerant of a file removed while it reads them."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from router.core import dead_metrics

# Each retry lists the files again; a retry is needed only when a child died mid-scrape.
ATTEMPTS = 5


class ChildrenCollector(MultiProcessCollector):
    """prometheus_client skips a vanished `live*` gauge file, but the supervisor also
    removes a dead child's `gauge_max_<pid>.db` (router/core/metrics.mark_dead): a scrape
    that listed it just before then failed whole, and the HTTP client saw the connection
    close without an answer (a reload restarts every worker)."""

    def collect(self) -> Iterable[Metric]:
        for attempt in range(ATTEMPTS):
            try:
                # A dead child's values move to the accumulated files under this lock: a
                # scrape sees them in one place, never both or neither.
                with dead_metrics.reading(self._path):
                    files = [f for f in glob.glob(os.path.join(self._path, "*.db"))
                             if _has_values(f)]
                    merged: Iterable[Metric] = self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
                return merged
            except FileNotFoundError:
                if attempt == ATTEMPTS - 1:
                    raise
        return []  # not reached


def _has_values(path: str) -> bool:
    """False for a file a starting child has just created and not yet sized: the client
    reads its first 4 bytes and fails on an empty file (struct.error), and the whole scrape
    with it (a reload restarts every worker). An empty file holds no sample to miss."""
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:
        return False
