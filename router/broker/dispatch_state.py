"""The Dispatcher's books: jobs, per-destination queues, workers and their leases, read-outs."""

from __future__ import annotations

import itertools
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from router.broker.completion import HELD_SHARE, GroupHolds
from router.broker.delayed_retries import DelayedRetries
from router.broker.deliveries import (
    DeadLetter,
    Delivery,
    DestinationPolicy,
    JobState,
    Outcome,
    Settled,
    WorkerState,
)
from router.broker.delivery_queue import DeliveryQueue
from router.broker.gathering import Gathering
from router.broker.instance_order import InstanceOrder
from router.broker.oldest_pending import OldestPending
from router.broker.spool_wait import SpoolWait
from router.broker.steady_wall import SteadyWall, arrival
from router.core.errors import CompletionShareFull
from router.core.messages import JobHeader

WORKER_LEASE_SECONDS = 6.0


class DispatchState:
    """What the Dispatcher knows, kept consistent: jobs and what each still waits for, the
    queues, the workers with their credits and leases; and what that state says (depth,
    oldest job, pauses, windows, when something is next due)."""

    def __init__(
        self,
        policies: Mapping[str, DestinationPolicy],
        max_jobs: int,
        max_bytes: int,
        rand: Callable[[], float] = random.random,
        holds: GroupHolds | None = None,
        wall: Callable[[], float] = time.time,
        local: Callable[[], datetime] = datetime.now,
        linger: float = 0.0,
        steady: Callable[[], float] | None = None,
    ) -> None:
        self.policies = dict(policies)
        self.gathering = Gathering(linger)  # queue.linger: a young queue waits to fill a run
        self.holds = holds or GroupHolds({})
        self.order = InstanceOrder()  # one instance's receptions reach a destination in order
        self.wall, self.local = wall, local
        # Completion holds wait by this clock, not by `wall`: it does not step (steady_wall.py).
        self.steady = steady if steady is not None else SteadyWall(wall)
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.rand = rand
        self.jobs: dict[str, JobState] = {}
        self.oldest = OldestPending()  # each destination's oldest pending job, kept as they change
        self.queued_bytes = 0
        self.queues: dict[str, DeliveryQueue[Delivery]] = {
            name: DeliveryQueue() for name in self.policies}
        self.in_flight: dict[str, int] = dict.fromkeys(self.policies, 0)
        self.delayed = DelayedRetries()
        # Dispatch tokens, from a random start: a restarted broker's never meet its
        # predecessor's, whose answers may still arrive.
        self._leases = itertools.count(secrets.randbits(62) + 1)
        self.workers: dict[bytes, WorkerState] = {}
        self._rotation = 0
        self.paused_until: dict[str, float] = dict.fromkeys(self.policies, 0.0)
        self.failures_in_a_row: dict[str, int] = dict.fromkeys(self.policies, 0)
        # Down when a reload changed its address: its back-off is cleared, but it is not up
        # until the new address takes an instance or answers about one (one probe first).
        self.readdressed: set[str] = set()
        # Readdressed by a reload, and the workers still on the old settings: its back-off
        # ends once they are all gone (each worker restarts to take the new config).
        self.readdress_waits: dict[str, set[bytes]] = {}
        self.spool_wait = SpoolWait()  # deliveries whose copy the spool refused (spool_wait.py)
        self.backoff_reason: dict[str, str] = {}  # what started a destination's back-off
        # Deliveries each destination took, and its count when a job's store last failed
        # under it (router/broker/dispatch.py: an abort spends an attempt only when the
        # destination took something else since).
        self.delivered_total: Counter[str] = Counter()
        self.store_failed_at: dict[tuple[str, str], int] = {}
        self.concurrency = {name: p.concurrency() for name, p in self.policies.items()}
        self.busy_until: dict[str, float] = dict.fromkeys(self.policies, 0.0)
        # Paused by an operator (router/broker/control.py): the queue holds until resumed.
        self.held: set[str] = set()
        # Limit changes since the caller last looked: (destination, old, new, why).
        self.limit_changes: list[tuple[str, int, int, str]] = []
        # When each destination went down, and those up again since the caller last looked:
        # (destination, seconds down, failures meanwhile).
        self.down_since: dict[str, float] = {}
        self.recoveries: list[tuple[str, float, int]] = []

    def reconfigure(self, policies: Mapping[str, DestinationPolicy], max_jobs: int,
                    max_bytes: int, holds: GroupHolds | None = None,
                    linger: float | None = None) -> None:
        """A config reload: new destinations get queues, changed ones their new policy.

        A destination no longer configured keeps its queue and policy here; the broker's
        control (control.py `reconfigure`) then gives what is queued for it up as
        `unknown_destination` dead letters an operator can replay elsewhere, and a delivery a
        worker holds ends as the worker says.
        """
        for name, policy in policies.items():
            old = self.policies.get(name)
            self.policies[name] = policy
            if old is not None and old.address != policy.address:
                self.readdress_waits[name] = set(self.workers)
                self._readdress_ready(name)
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
                if old is not None and old.address != policy.address:
                    self.concurrency[name].relearn()
            else:
                self.concurrency[name] = policy.concurrency()
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        if linger is not None:
            self.gathering.linger = linger
        if holds is not None:
            holds.adopt(self.holds)  # groups already held keep waiting
            self.holds = holds

    def _readdress_ready(self, name: str, gone: bytes = b"") -> None:
        """A reload changed where or how `name` is reached (an operator fixed a wrong
        address): the back-off the old settings earned says nothing about the new ones, so
        they are tried as soon as no worker is left with the old ones (the broker applies a
        reload before the workers restart: the probe went to an old worker, failed at the
        old address and paused it again), with one probe, and a failure there starts a
        fresh back-off. Kept, the old pause made the fixed address wait up to
        retry.max_delay."""
        stale = self.readdress_waits.get(name, set())
        stale.discard(gone)
        if stale:
            return
        self.readdress_waits.pop(name, None)
        if self.failures_in_a_row.get(name):
            self.readdressed.add(name)
        self.failures_in_a_row[name] = 0
        self.paused_until[name] = 0.0
        self.backoff_reason.pop(name, None)

    # --- jobs -------------------------------------------------------------------------------

    def refusal(self, job: JobHeader) -> str | None:
        """Why a new job cannot be taken now, or None."""
        if len(self.jobs) >= self.max_jobs:
            return f"queue full ({len(self.jobs)} jobs)"
        if self.queued_bytes + job.size > self.max_bytes:
            return f"queue full ({self.queued_bytes} bytes)"
        held = self.holds
        # With nothing held, one job is taken: a large one would be refused for ever.
        if (held.held_jobs and (held.held_jobs >= self.max_jobs * HELD_SHARE
                                or held.held_bytes + job.size > self.max_bytes * HELD_SHARE)
                and held.would_hold(job)):
            return (f"{CompletionShareFull.PREFIX} ({held.held_jobs} jobs, "
                    f"{held.held_bytes} bytes held until complete: at most half of "
                    "the queue's limits)")
        return None

    def add_job(self, job: JobHeader, delivered: Iterable[str] = (), *,
                exclusive: bool = True) -> list[Outcome]:
        """Queue a job for each destination it has not reached yet. Idempotent by job id.
        `exclusive`: no delivery of it can be running yet (False for what recovery found)."""
        if job.job_id in self.jobs:
            return []
        pending = set(job.destinations) - set(delivered)
        state = JobState(job, set(pending), exclusive, self.oldest.number(),
                         arrival(job.received_at, self.wall(), self.steady()))
        self.jobs[job.job_id] = state
        self.oldest.add(state, pending, self.jobs)
        self.queued_bytes += job.size
        outcomes: list[Outcome] = []
        for destination in job.destinations:
            if destination not in pending:
                continue
            delivery = Delivery(job, destination)
            if destination not in self.policies:
                outcomes += self._give_up(delivery, "unknown_destination",
                                          f"destination {destination!r} is not configured")
            else:
                self._enqueue(delivery)
        if not pending:
            outcomes += self._settle(job.job_id)
        return outcomes

    def _settle(self, job_id: str) -> list[Outcome]:
        state = self.jobs.pop(job_id)
        self.queued_bytes -= state.header.size
        for destination in state.header.destinations:
            self.store_failed_at.pop((job_id, destination), None)
        return [Settled(state.header, reusable=state.exclusive)]

    def _enqueue(self, delivery: Delivery, *, hold: bool = True) -> None:
        """A new delivery (one job) into its destination's queue, unless an older reception
        of its instance is still in play there (it waits in self.order) or, with `hold`, its
        study or series is held for completion."""
        if self.order.admit(delivery) and not (
                hold and self.holds.hold(delivery, self.arrived(delivery.job))):
            self.queues[delivery.destination].append(delivery)

    def arrived(self, job: JobHeader) -> float:
        """When `job` reached the broker, on its steady clock (steady_wall.py)."""
        state = self.jobs.get(job.job_id)
        if state is not None:
            return state.arrived
        return arrival(job.received_at, self.wall(), self.steady())

    def _finish(self, delivery: Delivery) -> list[Outcome]:
        following = self.order.done(delivery.destination, delivery.job)
        while following is not None and self._still_pending(following) is None:
            following = self.order.done(delivery.destination, following.job)  # never expected
        if following is not None:
            self._enqueue(following)
        self.store_failed_at.pop(delivery.key, None)
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
        for name in list(self.readdress_waits):
            self._readdress_ready(name, identity)
        for concurrency in self.concurrency.values():
            concurrency.worker_gone(identity)  # its associations died with it
        for delivery in reversed(list(worker.leases.values())):  # keep their original order
            self.in_flight[delivery.destination] -= 1
            for job in delivery.jobs:  # the worker may be alive and still reading them
                state = self.jobs.get(job.job_id)
                if state is not None:
                    state.exclusive = False
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
        return Delivery(jobs[0], delivery.destination, delivery.attempt, jobs, delivery.chain)

    def _requeue_front(self, delivery: Delivery) -> None:
        remaining = self._still_pending(delivery)
        if remaining is not None:
            self.queues[delivery.destination].appendleft(remaining)

    def _requeue_back(self, delivery: Delivery) -> None:
        """Behind the destination's other queued jobs (of its priority)."""
        remaining = self._still_pending(delivery)
        if remaining is not None:
            self.queues[delivery.destination].append(remaining)

    def expired_workers(self, now: float) -> list[bytes]:
        return [w.identity for w in self.workers.values()
                if now - w.last_seen > WORKER_LEASE_SECONDS]

    def _lease_back(self, identity: bytes, key: tuple[str, str], lease: int, now: float
                    ) -> Delivery | None:
        """The delivery this answer is for; None when it answers something else (a lease
        given to another worker, or, after a broker restart, the previous broker's delivery
        of the same job: its token differs, and the lease stays for its own answer)."""
        worker = self.workers.get(identity)
        if worker is None:
            return None  # a lease already given to another worker; that one will answer
        worker.credits += 1  # the answering delivery thread is free, whatever it answered
        worker.last_seen = now
        delivery = worker.leases.get(key)
        if delivery is None or delivery.lease != lease:
            return None
        del worker.leases[key]
        self.in_flight[delivery.destination] -= 1
        return delivery

    def is_paused(self, destination: str, now: float) -> bool:
        return self.paused_until[destination] > now

    def is_up(self, destination: str) -> bool:
        """Not since a failure that paused it: true again once it took an instance or
        answered about one. A pause's end is not that: the probe that follows may hang for
        its whole timeout, and /metrics showed such a destination up most of the time."""
        return self.failures_in_a_row[destination] == 0 and destination not in self.readdressed

    def in_window(self, destination: str) -> bool:
        window = self.policies[destination].window
        return window is None or window.is_open(self.local())

    def next_due(self, now: float) -> float | None:
        """When dispatch() may next have something new to send: a retry or a pause ending,
        a held group becoming due, a destination's time window opening."""
        retry_due = self.delayed.next_due()
        due = [retry_due] if retry_due is not None else []
        spool_due = self.spool_wait.next_due()
        if spool_due is not None:
            due.append(spool_due)
        due += [t for name, t in self.paused_until.items() if t > now and self.queues[name]]
        due += [t for name, t in self.busy_until.items() if t > now and self.queues[name]]
        group_due = self.holds.next_due()
        if group_due is not None:
            due.append(now + max(0.0, group_due - self.steady()))
        for name, policy in self.policies.items():
            if policy.window is not None and self.queues[name]:
                # Only its opening is an event: an open window was "due now" on every turn,
                # and the loop spun while the queue could not go (down, paused, at its limit).
                opens = policy.window.opens_in(self.local())
                if opens > 0:
                    due.append(now + opens)
        gathered = self.gathering.next_due(self.queues, now)
        if gathered is not None:
            due.append(gathered)
        return min(due, default=None)

    def depth(self, destination: str) -> int:
        waiting = self.delayed.jobs(destination) + self.spool_wait.jobs(destination)
        return (self.queues[destination].jobs + waiting + self.holds.depth(destination)
                + self.order.parked(destination))

    def oldest_age(self, destination: str) -> float:
        """How long the oldest job (by arrival) still pending for `destination` has waited
        (0: none), on the steady clock: by the system clock, a step forward of two hours
        showed a queue of seconds two hours old (the stuck-queue alert fired), and a step
        back showed a stuck one as new for two hours."""
        state = self.oldest.oldest(destination, self.jobs)
        return max(0.0, self.steady() - state.arrived) if state is not None else 0.0
