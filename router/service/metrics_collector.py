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
                    files = glob.glob(os.path.join(self._path, "*.db"))
                    merged: Iterable[Metric] = self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
                return merged
            except FileNotFoundError:
                if attempt == ATTEMPTS - 1:
                    raise
        return []  # not reached
