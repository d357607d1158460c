"""Deliveries waiting out a retry's back-off, soonest first, with each destination's count of
jobs kept as they come and go: depth() reads it on every heartbeat, and walking 100,000
delayed retries there cost the broker milliseconds each time."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterator

from router.broker.deliveries import Delivery

Entry = tuple[float, int, Delivery]  # (due, sequence: first in first out among equals, delivery)


class DelayedRetries:
    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._sequence = itertools.count()
        self._jobs: Counter[str] = Counter()  # per destination: sum of the deliveries' sizes

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._heap)

    def push(self, due: float, delivery: Delivery) -> None:
        heapq.heappush(self._heap, (due, next(self._sequence), delivery))
        self._jobs[delivery.destination] += delivery.size

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[Delivery]:
        """Remove and yield the deliveries due by `now`, soonest first."""
        while self._heap and self._heap[0][0] <= now:
            delivery = heapq.heappop(self._heap)[2]
            self._uncount(delivery)
            yield delivery

    def take(self, destination: str, keep: int = 0) -> list[Delivery]:
        """Remove and return every delivery for `destination`, soonest first, but the
        `keep` soonest, which go on waiting out their back-off."""
        if not self._jobs.get(destination):
            return []
        taken = sorted(e for e in self._heap if e[2].destination == destination)
        self._heap = [e for e in self._heap if e[2].destination != destination]
        del self._jobs[destination]
        for entry in taken[:keep]:
            self._heap.append(entry)
            self._jobs[destination] += entry[2].size
        heapq.heapify(self._heap)
        return [e[2] for e in taken[keep:]]

    def jobs(self, destination: str) -> int:
        """Jobs delayed for `destination` (a batch counts each of its jobs)."""
        return self._jobs.get(destination, 0)

    def _uncount(self, delivery: Delivery) -> None:
        left = self._jobs[delivery.destination] - delivery.size
        if left:
            self._jobs[delivery.destination] = left
        else:
            del self._jobs[delivery.destination]
