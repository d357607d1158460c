"""Deliveries waiting for the spool to take a worker's copy (README "Retries": `spool_write`).

A full spool is one condition for all of them, as a destination that is down is one for its
queue: a spell counts one failure however many deliveries it catches, and its back-off grows
only when the spell's probe meets the full spool again. When the back-off ends, one waiting
delivery goes as the probe; once the spool takes a copy again (the probe gets past its
copy, or any delivery that wrote one succeeds) every waiting delivery goes back at once.
Each destination's count of waiting jobs is kept as they come and go: depth() reads it on
every report (change `waiting` through the methods).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from router.broker.deliveries import Delivery, backoff
from router.core.config import RetryConfig


@dataclass
class SpoolWait:
    failures_in_a_row: int = 0  # spells, not deliveries
    until: float = 0.0  # when the back-off ends and a probe goes
    delay: float = 0.0  # the spell's back-off: also how long an unanswered probe is waited for
    reason: str = ""  # what the spool said when the spell began ("spool_write: ...")
    probe: tuple[str, str] | None = None  # (job id, destination) of the delivery probing
    waiting: list[Delivery] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # jobs waiting, by destination

    def failed(self, delivery: Delivery, retry: RetryConfig, reason: str, now: float,
               rand: Callable[[], float]) -> tuple[float, bool]:
        """The spool refused this delivery's copy: it waits. Returns the seconds until the
        next probe and whether this failure began a spell (counted once)."""
        probing = delivery.key == self.probe
        starts = probing or now >= self.until
        if starts:
            self.failures_in_a_row += 1
            self.delay = backoff(retry, self.failures_in_a_row, rand)
            self.until = now + self.delay
            self.reason = reason
            self.probe = None
        if probing:
            self.waiting.insert(0, delivery)  # it was first: it probes again
        else:
            self.waiting.append(delivery)
        self.counts[delivery.destination] += delivery.size
        return self.until - now, starts

    def probe_due(self, now: float) -> Delivery | None:
        """The delivery to try now, once the back-off has ended (one at a time)."""
        if not self.waiting or now < self.until:
            return None
        delivery = self.waiting.pop(0)
        self.counts[delivery.destination] -= delivery.size
        self.probe = delivery.key
        self.until = now + self.delay  # a probe that never answers (its job withdrawn): the next
        return delivery

    def took_copy(self) -> list[Delivery]:
        """The spool takes copies again: the spell ends and every waiting delivery goes."""
        released, self.waiting = self.waiting, []
        self.counts.clear()
        self.failures_in_a_row, self.until, self.probe, self.reason = 0, 0.0, None, ""
        return released

    def take(self, destination: str) -> list[Delivery]:
        """Remove and return what waits for `destination` (an operator's retry, a drain)."""
        taken = [d for d in self.waiting if d.destination == destination]
        self.waiting = [d for d in self.waiting if d.destination != destination]
        self.counts.pop(destination, None)
        return taken

    def next_due(self) -> float | None:
        return self.until if self.waiting else None

    def jobs(self, destination: str) -> int:
        return self.counts.get(destination, 0)
