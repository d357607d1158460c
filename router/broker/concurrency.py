"""How many associations a destination takes, learned while delivering (no I/O).

Many PACS, workstations and gateways serve one association at a time (a plain `storescp`
without `--fork`) or a few: a further association request is rejected ("local limit
exceeded", transient) or left unanswered in the peer's TCP backlog. The broker therefore
keeps, per destination:
- a live limit on open associations, starting at 1 and raised by one after a delivery while
  more work waits (slow start), up to the ceiling (`max_parallel`, or `max_associations`,
  which pins it and turns learning off);
- which worker holds how many associations to it, so that a delivery goes to a worker that
  has an idle association before a new one is opened anywhere;
- after a "busy" answer (a new association refused or unanswered while the router holds
  another one), the limit drops to what is open (never below 1), the delivery goes back to
  the queue without spending an attempt, and no upward probe happens for `probe_interval`.

An association a worker holds but does not use is released by the worker after
`idle_timeout`; the broker forgets it a little later (IDLE_MARGIN), so it never counts an
association as gone while it may still be open.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

IDLE_MARGIN = 2.0  # a worker notices an idle association within a second of its timeout
# Reasons after which the worker no longer holds the association it used.
ASSOCIATION_LOST = frozenset(
    {"connection", "aborted", "rejected", "tls", "busy", "dimse_timeout", "no_context",
     "protocol", "max_pdu"})


@dataclass(frozen=True)
class Choice:
    worker: bytes
    new_association: bool
    others_open: int  # associations the router holds to the destination besides this one


@dataclass
class Concurrency:
    """One destination's associations: the live limit and who holds what."""

    ceiling: int
    pinned: bool = False  # max_associations: no learning, the limit is the ceiling
    probe_interval: float = 60.0
    idle_timeout: float = 2.0
    limit: int = 0
    probe_after: float = 0.0  # monotonic time before which the limit is not raised
    open: Counter[bytes] = field(default_factory=Counter)  # worker -> associations held
    # New associations not yet proven by a delivery: the limit is raised only when there are
    # none, so a probe is one association at a time, not a burst.
    unproven: Counter[bytes] = field(default_factory=Counter)
    in_use: Counter[bytes] = field(default_factory=Counter)  # worker -> deliveries running
    last_used: dict[bytes, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.limit <= 0:
            self.limit = self.ceiling if self.pinned else 1

    @property
    def total_open(self) -> int:
        return sum(self.open.values())

    @property
    def total_in_use(self) -> int:
        return sum(self.in_use.values())

    def open_at(self, now: float) -> int:
        """Associations open now: the idle ones the workers have released by now no longer
        count (shown while the destination is idle or paused, when choose() does not run)."""
        self._expire(now)
        return self.total_open

    def _expire(self, now: float) -> None:
        for worker in list(self.open):
            idle = now - self.last_used.get(worker, now)
            if self.in_use[worker] == 0 and idle > self.idle_timeout + IDLE_MARGIN:
                del self.open[worker]

    def choose(self, credits: dict[bytes, int], now: float) -> Choice | None:
        """The worker for the next delivery: one with an idle association first, else a new
        association if the limit allows. `credits` are the workers' free delivery threads."""
        self._expire(now)
        ready = [w for w, c in credits.items() if c > 0]
        reuse = [w for w in ready if self.in_use[w] < self.open[w]]
        if reuse:
            worker = max(reuse, key=lambda w: credits[w])
            self.in_use[worker] += 1
            return Choice(worker, False, self.total_open - 1)
        if not ready or self.total_open >= self.limit:
            return None
        worker = max(ready, key=lambda w: credits[w])
        others = self.total_open
        self.open[worker] += 1
        self.in_use[worker] += 1
        self.unproven[worker] += 1
        return Choice(worker, True, others)

    def finished(self, worker: bytes, reason: str, now: float, opened: bool = False) -> None:
        """A delivery on `worker` ended (reason "" when delivered); `opened`: it was the one
        that opened a new association."""
        if self.in_use[worker] > 0:
            self.in_use[worker] -= 1
        if opened and self.unproven[worker] > 0:
            self.unproven[worker] -= 1  # delivered over it, or it is gone: no longer a probe
        self.last_used[worker] = now
        if reason in ASSOCIATION_LOST and self.open[worker] > 0:
            self.open[worker] -= 1

    def busy(self, worker: bytes, now: float) -> bool:
        """The destination refused one more association. True if the limit went down."""
        self.finished(worker, "busy", now, opened=True)
        self.probe_after = now + self.probe_interval
        if self.pinned:
            return False
        lowered = max(1, min(self.limit, self.total_open))
        changed = lowered != self.limit
        self.limit = lowered
        return changed

    def delivered(self, backlog: int, now: float) -> bool:
        """After a success: one association more while work waits. True if raised."""
        if self.pinned or self.limit >= self.ceiling or now < self.probe_after:
            return False
        if backlog <= 0 or self.total_open < self.limit or self.unproven.total() > 0:
            return False  # the current limit is not even used, or a probe is under way
        self.limit += 1
        return True

    def worker_gone(self, worker: bytes) -> None:
        self.unproven.pop(worker, None)
        self.open.pop(worker, None)
        self.in_use.pop(worker, None)
        self.last_used.pop(worker, None)

    def relearn(self) -> None:
        """A reload gave it a new address (host, port, AE titles): what the old one taught
        says nothing of the new peer, which is learned from the start, as a new destination
        (kept, a limit of 1 learned from the old PACS held the new one for probe_interval)."""
        self.probe_after = 0.0
        if not self.pinned:
            self.limit = 1

    def reconfigure(self, ceiling: int, pinned: bool, probe_interval: float,
                    idle_timeout: float) -> None:
        self.ceiling, self.pinned = ceiling, pinned
        self.probe_interval, self.idle_timeout = probe_interval, idle_timeout
        self.limit = ceiling if pinned else max(1, min(self.limit, ceiling))
