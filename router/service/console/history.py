"""The last hour of throughput and queue depth, kept in memory by the process serving the
console (no database: a restart starts an empty chart), for the overview's charts."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.service.metric_samples import Samples, total

SAMPLE_SECONDS = 10.0
KEEP_SECONDS = 3600.0


@dataclass(frozen=True)
class Point:
    at: float  # wall clock
    received: float  # instances accepted, counter
    delivered: float  # instances delivered, counter
    queued: int  # jobs queued, gauge
    delivered_by: dict[str, float]  # per destination, counter


class History:
    def __init__(self, samples: Callable[[], Samples], queued: Callable[[], int]) -> None:
        self.samples, self.queued = samples, queued
        self.points: deque[Point] = deque(maxlen=int(KEEP_SECONDS / SAMPLE_SECONDS) + 1)
        self.lock = threading.Lock()

    def sample(self, now: float | None = None) -> None:
        """Take a point if the last one is SAMPLE_SECONDS old (called by each overview read,
        so nothing runs while nobody looks; a gap then shows as a gap)."""
        now = time.time() if now is None else now
        with self.lock:
            if self.points and now - self.points[-1].at < SAMPLE_SECONDS:
                return
        samples = self.samples()
        point = Point(now, total(samples, "dicom_router_instances_received_total",
                                 result="accepted"),
                      total(samples, "dicom_router_instances_forwarded_total",
                            result="delivered"),
                      self.queued(),
                      _delivered_by(samples))
        with self.lock:
            self.points.append(point)

    def series(self) -> dict[str, Any]:
        """Per-interval rates (instances/s) and the queue, for the charts."""
        with self.lock:
            points = list(self.points)
        rates = []
        for before, after in itertools.pairwise(points):
            span = max(1e-6, after.at - before.at)
            rates.append({"at": after.at,
                          "in": max(0.0, (after.received - before.received) / span),
                          "out": max(0.0, (after.delivered - before.delivered) / span)})
        return {"rates": rates, "queue": [{"at": p.at, "jobs": p.queued} for p in points]}

    def rate_by_destination(self) -> dict[str, float]:
        """Delivered per second over the last two points."""
        with self.lock:
            if len(self.points) < 2:
                return {}
            before, after = self.points[-2], self.points[-1]
        span = max(1e-6, after.at - before.at)
        return {name: max(0.0, (value - before.delivered_by.get(name, 0.0)) / span)
                for name, value in after.delivered_by.items()}


def _delivered_by(samples: Samples) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), value in samples.items():
        row = dict(labels)
        if name == "dicom_router_instances_forwarded_total" and row.get("result") == "delivered":
            out[row.get("destination", "")] = out.get(row.get("destination", ""), 0.0) + value
    return out


