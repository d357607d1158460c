"""The deliveries waiting for one destination: urgent first, and in arrival order within a
priority (router/broker/dispatch.py keeps one per destination)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from router.core.priority import LOW, PRIORITIES, URGENT


class Prioritised(Protocol):
    @property
    def priority(self) -> int: ...

    @property
    def size(self) -> int: ...  # jobs it carries (a batch carries several)


T = TypeVar("T", bound=Prioritised)


class DeliveryQueue(Generic[T]):
    def __init__(self) -> None:
        self._levels: list[deque[T]] = [deque() for _ in PRIORITIES]
        self.jobs = 0  # sum of the items' sizes, kept as they come and go: depth() reads it

    def _level(self, item: T) -> deque[T]:
        return self._levels[min(max(item.priority, URGENT), LOW)]

    def append(self, item: T) -> None:
        self._level(item).append(item)
        self.jobs += item.size

    def appendleft(self, item: T) -> None:
        """Back to the front of its priority: a delivery taken back keeps its turn."""
        self._level(item).appendleft(item)
        self.jobs += item.size

    def popleft(self) -> T:
        for level in self._levels:
            if level:
                item = level.popleft()
                self.jobs -= item.size
                return item
        raise IndexError("pop from an empty delivery queue")

    def peek(self) -> T | None:
        """What popleft() would return, or None."""
        for level in self._levels:
            if level:
                return level[0]
        return None

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    def __bool__(self) -> bool:
        return any(self._levels)

    def __iter__(self) -> Iterator[T]:
        for level in self._levels:
            yield from level
