"""The broker's state machine, without I/O: jobs, per-destination queues, credits, leases.

Rules it keeps:
- A job is queued once per destination; it is settled when every destination either has it
  or was given up (dead letter). Only then may its spool files go.
- A delivery is sent only to a worker with credit, and to a destination below its live
  association limit (router/concurrency.py: learned, at most `max_parallel`), so a slow
  destination never takes every worker from the others, and a destination that serves one
  association at a time gets one. A worker that holds an idle association to the
  destination is preferred to opening a new one.
- A destination that is busy (refused one more association) is not down: the limit drops,
  the delivery goes back to the front of its queue without spending an attempt.
- A queue longer than the limit goes out in runs (one Deliver carrying several jobs), so the
  per-instance cost of a round trip through the broker is shared.
- A delivery a worker holds is leased to it: when the worker says goodbye or stops
  heartbeating, its deliveries go back to the front of their queues (same attempt number).
- A failure of the destination itself (cannot connect, association aborted or rejected
  transiently) pauses that destination with exponential backoff and jitter; the delivery
  goes back to the front of its queue without spending an attempt, so a PACS that is down
  for a weekend holds its queue instead of turning it into dead letters.
- A failure of one delivery (a failure status, a DIMSE timeout) is retried after exponential
  backoff with jitter while it is transient and attempts remain; otherwise it becomes a
  dead letter with the reason.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from router.completion import MAX_BATCH, GroupHolds
from router.concurrency import ASSOCIATION_LOST, Choice, Concurrency
from router.config import RetryConfig
from router.delivery_queue import DeliveryQueue
from router.messages import JobHeader, Result
from router.time_window import TimeWindow

WORKER_LEASE_SECONDS = 6.0
# Transient reasons that say the destination, not the instance, is in trouble.
DESTINATION_FAILURES = frozenset({"connection", "aborted", "rejected", "tls"})
# A batch stops at these: the destination is down, or busy (router/concurrency.py).
HOLD_BACK_FAILURES = DESTINATION_FAILURES | {"busy"}


BUSY_HOLD_SECONDS = 1.0  # a busy destination with nothing of ours open: wait, then try again
RUN_MAX_JOBS = 32  # jobs per run of a long queue (one Deliver)
RUN_MAX_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class DestinationPolicy:
    max_parallel: int
    retry: RetryConfig
    window: TimeWindow | None = None  # outside it, the destination's queue is held
    max_associations: int | None = None  # pins the association limit (no learning)
    probe_interval: float = 60.0
    idle_timeout: float = 2.0

    def concurrency(self) -> Concurrency:
        pinned = self.max_associations is not None
        ceiling = min(self.max_parallel, self.max_associations or self.max_parallel)
        return Concurrency(ceiling, pinned, self.probe_interval, self.idle_timeout)


@dataclass(frozen=True)
class Delivery:
    job: JobHeader
    destination: str
    attempt: int = 1
    # A completed study or series, or a run of a long queue: these jobs in order over one
    # association (job = the first).
    batch: tuple[JobHeader, ...] = ()
    others_open: int = 0  # associations to the destination the router holds besides this
    opens_association: bool = False  # no idle one was there: the worker opens a new one

    @property
    def key(self) -> tuple[str, str]:
        return (self.job.job_id, self.destination)

    @property
    def jobs(self) -> tuple[JobHeader, ...]:
        return self.batch or (self.job,)

    @property
    def priority(self) -> int:
        return self.job.priority

    @property
    def size(self) -> int:
        return len(self.jobs)


@dataclass
class JobState:
    header: JobHeader
    pending: set[str]


@dataclass
class WorkerState:
    identity: bytes
    credits: int
    last_seen: float
    leases: dict[tuple[str, str], Delivery] = field(default_factory=dict)


@dataclass(frozen=True)
class Settled:
    """Every destination of this job is done with: remove it from the spool."""

    job: JobHeader


@dataclass(frozen=True)
class DeadLetter:
    delivery: Delivery
    reason: str
    detail: str


@dataclass(frozen=True)
class Retry:
    delivery: Delivery
    delay: float
    reason: str


Outcome = Settled | DeadLetter | Retry


def backoff(retry: RetryConfig, attempt: int, rand: Callable[[], float]) -> float:
    """Exponential from initial_delay, capped at max_delay, with jitter in [50%, 100%]."""
    base = min(retry.max_delay, retry.initial_delay * 2.0 ** (attempt - 1))
    return float(base * (0.5 + rand() / 2))


class Dispatcher:
    def __init__(
        self,
        policies: Mapping[str, DestinationPolicy],
        max_jobs: int,
        max_bytes: int,
        rand: Callable[[], float] = random.random,
        holds: GroupHolds | None = None,
        wall: Callable[[], float] = time.time,
        local: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.policies = dict(policies)
        self.holds = holds or GroupHolds({})
        self.wall, self.local = wall, local
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.rand = rand
        self.jobs: dict[str, JobState] = {}
        self.queued_bytes = 0
        self.queues: dict[str, DeliveryQueue[Delivery]] = {
            name: DeliveryQueue() for name in self.policies}
        self.in_flight: dict[str, int] = dict.fromkeys(self.policies, 0)
        self.delayed: list[tuple[float, int, Delivery]] = []
        self._sequence = itertools.count()
        self.workers: dict[bytes, WorkerState] = {}
        self._rotation = 0
        self.paused_until: dict[str, float] = dict.fromkeys(self.policies, 0.0)
        self.failures_in_a_row: dict[str, int] = dict.fromkeys(self.policies, 0)
        self.concurrency = {name: p.concurrency() for name, p in self.policies.items()}
        self.busy_until: dict[str, float] = dict.fromkeys(self.policies, 0.0)
        # Paused by an operator (router/control.py): the queue holds until resumed.
        self.held: set[str] = set()
        # Limit changes since the caller last looked: (destination, old, new, why).
        self.limit_changes: list[tuple[str, int, int, str]] = []

    def reconfigure(self, policies: Mapping[str, DestinationPolicy], max_jobs: int,
                    max_bytes: int, holds: GroupHolds | None = None) -> None:
        """A config reload: new destinations get queues, changed ones their new policy.

        A destination no longer configured keeps its queue and policy: what is queued for it
        still goes to the workers, which give it up as `unknown_destination`, a dead letter an
        operator can replay elsewhere, rather than vanishing here.
        """
        for name, policy in policies.items():
            self.policies[name] = policy
            self.queues.setdefault(name, DeliveryQueue())
            self.in_flight.setdefault(name, 0)
            self.paused_until.setdefault(name, 0.0)
            self.failures_in_a_row.setdefault(name, 0)
            self.busy_until.setdefault(name, 0.0)
            pinned = policy.max_associations is not None
            if name in self.concurrency:
                ceiling = policy.concurrency().ceiling
                self.concurrency[name].reconfigure(ceiling, pinned, policy.probe_interval,
                                                   policy.idle_timeout)
            else:
                self.concurrency[name] = policy.concurrency()
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        if holds is not None:
            holds.groups = self.holds.groups  # groups already held keep waiting
            self.holds = holds

    # --- jobs -------------------------------------------------------------------------------

    def refusal(self, job: JobHeader) -> str | None:
        """Why a new job cannot be taken now, or None."""
        if len(self.jobs) >= self.max_jobs:
            return f"queue full ({len(self.jobs)} jobs)"
        if self.queued_bytes + job.size > self.max_bytes:
            return f"queue full ({self.queued_bytes} bytes)"
        return None

    def add_job(self, job: JobHeader, delivered: Iterable[str] = ()) -> list[Outcome]:
        """Queue a job for each destination it has not reached yet. Idempotent by job id."""
        if job.job_id in self.jobs:
            return []
        pending = set(job.destinations) - set(delivered)
        self.jobs[job.job_id] = JobState(job, set(pending))
        self.queued_bytes += job.size
        outcomes: list[Outcome] = []
        for destination in job.destinations:
            if destination not in pending:
                continue
            delivery = Delivery(job, destination)
            if destination not in self.policies:
                outcomes += self._give_up(delivery, "unknown_destination",
                                          f"destination {destination!r} is not configured")
            elif not self.holds.hold(delivery):
                self.queues[destination].append(delivery)
        if not pending:
            outcomes += self._settle(job.job_id)
        return outcomes

    def _settle(self, job_id: str) -> list[Outcome]:
        state = self.jobs.pop(job_id)
        self.queued_bytes -= state.header.size
        return [Settled(state.header)]

    def _finish(self, delivery: Delivery) -> list[Outcome]:
        state = self.jobs.get(delivery.job.job_id)
        if state is None:
            return []
        state.pending.discard(delivery.destination)
        return [] if state.pending else self._settle(delivery.job.job_id)

    def _give_up(self, delivery: Delivery, reason: str, detail: str) -> list[Outcome]:
        return [DeadLetter(delivery, reason, detail), *self._finish(delivery)]

    # --- workers ----------------------------------------------------------------------------

    def worker_ready(self, identity: bytes, credits: int, now: float) -> None:
        worker = self.workers.get(identity)
        if worker is None:
            self.workers[identity] = WorkerState(identity, credits, now)
        else:
            worker.credits = credits
            worker.last_seen = now

    def worker_seen(self, identity: bytes, now: float) -> bool:
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = now
        return worker is not None

    def worker_gone(self, identity: bytes) -> int:
        """Return a departed worker's leased deliveries to the front of their queues."""
        worker = self.workers.pop(identity, None)
        if worker is None:
            return 0
        for concurrency in self.concurrency.values():
            concurrency.worker_gone(identity)  # its associations died with it
        for delivery in reversed(list(worker.leases.values())):  # keep their original order
            self.in_flight[delivery.destination] -= 1
            self._requeue_front(delivery)
        return sum(d.size for d in worker.leases.values())

    def _still_pending(self, delivery: Delivery) -> Delivery | None:
        """The delivery with only the jobs still pending for its destination (None: none)."""
        jobs = tuple(j for j in delivery.jobs if j.job_id in self.jobs
                     and delivery.destination in self.jobs[j.job_id].pending)
        if not jobs:
            return None
        if not delivery.batch:
            return delivery
        return Delivery(jobs[0], delivery.destination, delivery.attempt, jobs)

    def _requeue_front(self, delivery: Delivery) -> None:
        remaining = self._still_pending(delivery)
        if remaining is not None:
            self.queues[delivery.destination].appendleft(remaining)

    def expired_workers(self, now: float) -> list[bytes]:
        return [w.identity for w in self.workers.values()
                if now - w.last_seen > WORKER_LEASE_SECONDS]

    def _lease_back(self, identity: bytes, key: tuple[str, str], now: float
                    ) -> Delivery | None:
        worker = self.workers.get(identity)
        if worker is None:
            return None  # a lease already given to another worker; that one will answer
        delivery = worker.leases.pop(key, None)
        worker.credits += 1
        worker.last_seen = now
        if delivery is not None:
            self.in_flight[delivery.destination] -= 1
        return delivery

    def result(self, identity: bytes, result: Result, now: float) -> list[Outcome]:
        delivery = self._lease_back(identity, (result.job_id, result.destination), now)
        if delivery is None:
            return []
        self._association_ended(identity, delivery, [result], now)
        return self._outcome(delivery, result, now)

    def _association_ended(self, identity: bytes, delivery: Delivery, results: list[Result],
                           now: float) -> None:
        """Tell the destination's Concurrency how the association fared (busy, lost, fine)."""
        name = delivery.destination
        concurrency = self.concurrency.get(name)
        if concurrency is None:
            return
        failed = [r for r in results if not r.delivered]
        reason = failed[0].reason if failed else ""
        before = concurrency.limit
        if reason == "busy":
            if concurrency.busy(identity, now):
                self.limit_changes.append((name, before, concurrency.limit, "busy"))
            return
        lost = next((r.reason for r in failed if r.reason in ASSOCIATION_LOST), reason)
        concurrency.finished(identity, lost, now, delivery.opens_association)
        if any(r.delivered for r in results) and concurrency.delivered(
                self.queues[name].jobs, now):
            self.limit_changes.append((name, before, concurrency.limit, "probe"))

    def batch_result(self, identity: bytes, destination: str, results: list[Result],
                     now: float) -> list[Outcome]:
        """A batch's results: each job on its own, except that a failure of the destination
        itself puts what was not delivered back as one batch at the front of the queue."""
        if not results:
            return []
        batch = self._lease_back(identity, (results[0].job_id, destination), now)
        if batch is None:
            return []
        self._association_ended(identity, batch, results, now)
        by_id = {job.job_id: job for job in batch.jobs}
        outcomes: list[Outcome] = []
        held_back: list[JobHeader] = []
        failure: Result | None = None
        for result in results:
            job = by_id.get(result.job_id)
            if job is None:
                continue
            if (not result.delivered and result.transient
                    and result.reason in HOLD_BACK_FAILURES):
                held_back.append(job)
                failure = result
                continue
            outcomes += self._outcome(Delivery(job, destination, batch.attempt), result, now)
        reported = {r.job_id for r in results}
        held_back += [j for j in batch.jobs if j.job_id not in reported]  # never tried
        if held_back:
            rest = Delivery(held_back[0], destination, batch.attempt, tuple(held_back))
            reason = failure.reason if failure is not None else "aborted"
            outcomes.append(self._busy(rest, now) if reason == "busy"
                            else self._pause(rest, reason, now))
        return outcomes

    def _outcome(self, delivery: Delivery, result: Result, now: float) -> list[Outcome]:
        if result.delivered:
            self.failures_in_a_row[delivery.destination] = 0
            self.paused_until[delivery.destination] = 0.0
            return self._finish(delivery)
        if result.reason == "withdrawn":
            return self._finish(delivery)  # the sender was told to retry; nothing to deliver
        if result.reason == "busy":
            return [self._busy(delivery, now)]
        if result.transient and result.reason in DESTINATION_FAILURES:
            return [self._pause(delivery, result.reason, now)]
        policy = self.policies[delivery.destination]
        if result.transient and delivery.attempt < policy.retry.max_attempts:
            delay = backoff(policy.retry, delivery.attempt, self.rand)
            retry = Delivery(delivery.job, delivery.destination, delivery.attempt + 1)
            heapq.heappush(self.delayed, (now + delay, next(self._sequence), retry))
            return [Retry(retry, delay, result.reason)]
        reason = result.reason if not result.transient else f"{result.reason}_retries_exhausted"
        return self._give_up(delivery, reason, result.detail)

    def _pause(self, delivery: Delivery, reason: str, now: float) -> Retry:
        """Hold the destination's whole queue; this delivery waits at its front."""
        name = delivery.destination
        if now >= self.paused_until[name]:  # deliveries already out fail too: count once
            self.failures_in_a_row[name] += 1
            policy = self.policies[name]
            delay = backoff(policy.retry, self.failures_in_a_row[name], self.rand)
            self.paused_until[name] = now + delay
        self._requeue_front(delivery)
        return Retry(delivery, self.paused_until[name] - now, reason)

    def _busy(self, delivery: Delivery, now: float) -> Retry:
        """The destination is busy, not down: no attempt spent, no failure counted. With none
        of our associations open to it (another sender holds it), wait a moment first."""
        name = delivery.destination
        self._requeue_front(delivery)
        if self.concurrency[name].total_in_use == 0:
            self.busy_until[name] = now + BUSY_HOLD_SECONDS
        return Retry(delivery, max(0.0, self.busy_until[name] - now), "busy")

    def is_paused(self, destination: str, now: float) -> bool:
        return self.paused_until[destination] > now

    # --- dispatch ---------------------------------------------------------------------------

    def _release_due(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            _, _, delivery = heapq.heappop(self.delayed)
            if delivery.job.job_id in self.jobs:
                self.queues[delivery.destination].append(delivery)
        for destination, deliveries in self.holds.due(self.wall()):
            pending = [d.job for d in deliveries if d.job.job_id in self.jobs]
            for start in range(0, len(pending), MAX_BATCH):
                jobs = tuple(pending[start:start + MAX_BATCH])
                self.queues[destination].append(Delivery(jobs[0], destination, 1, jobs))

    def _pick_worker(self) -> WorkerState | None:
        best = max(self.workers.values(), key=lambda w: w.credits, default=None)
        return best if best is not None and best.credits > 0 else None

    def dispatch(self, now: float) -> list[tuple[bytes, Delivery]]:
        """Deliveries to send now, round-robin across destinations, within credits and limits."""
        self._release_due(now)
        sends: list[tuple[bytes, Delivery]] = []
        names = list(self.queues)
        while any(w.credits > 0 for w in self.workers.values()):
            picked = self._next_sendable(names, now)
            if picked is None:
                break
            name, choice = picked
            delivery = replace(self._take_run(name), others_open=choice.others_open,
                               opens_association=choice.new_association)
            worker = self.workers[choice.worker]
            worker.credits -= 1
            worker.leases[delivery.key] = delivery
            self.in_flight[name] += 1
            sends.append((worker.identity, delivery))
        return sends

    def _take_run(self, name: str) -> Delivery:
        """The next delivery; with a queue longer than the destination's limit, a run of the
        plain deliveries that follow it (same priority and attempt), up to RUN_MAX_JOBS and
        RUN_MAX_BYTES, so that the limit's associations share the queue evenly."""
        queue, concurrency = self.queues[name], self.concurrency[name]
        # Associations free for this queue, counting the one this delivery takes.
        free = max(1, concurrency.limit - concurrency.total_in_use + 1)
        length = min(RUN_MAX_JOBS, -(-len(queue) // free))
        first = queue.popleft()
        if first.batch:
            return first
        jobs, size = [first.job], first.job.size
        while len(jobs) < length:
            item = queue.peek()
            if (item is None or item.batch or item.attempt != first.attempt
                    or item.priority != first.priority or size + item.job.size > RUN_MAX_BYTES):
                break
            queue.popleft()
            jobs.append(item.job)
            size += item.job.size
        if len(jobs) == 1:
            return first
        return Delivery(first.job, name, first.attempt, tuple(jobs))

    def _next_sendable(self, names: list[str], now: float) -> tuple[str, Choice] | None:
        """The next destination after the last one served that has work and room, with the
        worker to send it to."""
        credits = {w.identity: w.credits for w in self.workers.values()}
        for offset in range(len(names)):
            index = (self._rotation + offset) % len(names)
            name = names[index]
            if (not self.queues[name] or self.paused_until[name] > now or name in self.held
                    or self.busy_until[name] > now or not self.in_window(name)):
                continue
            choice = self.concurrency[name].choose(credits, now)
            if choice is not None:
                self._rotation = index + 1  # the next call starts after this one: no starvation
                return name, choice
        return None

    def in_window(self, destination: str) -> bool:
        window = self.policies[destination].window
        return window is None or window.is_open(self.local())

    def next_due(self, now: float) -> float | None:
        """When dispatch() may next have something new to send: a retry or a pause ending,
        a held group becoming due, a destination's time window opening."""
        due = [self.delayed[0][0]] if self.delayed else []
        due += [t for name, t in self.paused_until.items() if t > now and self.queues[name]]
        due += [t for name, t in self.busy_until.items() if t > now and self.queues[name]]
        group_due = self.holds.next_due()
        if group_due is not None:
            due.append(now + max(0.0, group_due - self.wall()))
        for name, policy in self.policies.items():
            if policy.window is not None and self.queues[name]:
                due.append(now + policy.window.opens_in(self.local()))
        return min(due, default=None)

    def depth(self, destination: str) -> int:
        waiting = sum(d.size for _, _, d in self.delayed if d.destination == destination)
        return self.queues[destination].jobs + waiting + self.holds.depth(destination)

    def oldest_received(self, destination: str) -> float | None:
        """When the oldest job still pending for `destination` was received (None: none).

        Jobs are kept in arrival order, so the scan stops at the first one still pending.
        """
        for state in self.jobs.values():
            if destination in state.pending:
                return state.header.received_at
        return None
