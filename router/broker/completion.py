"""Study and series completion: a rule with `complete` holds what it routes until the study
(or series) is stable, then releases it to each destination as one batch in instance order.

Stable means no new instance of the group for `stable_for` seconds; `deadline` seconds after
its first instance a group is released whatever happens. The times are when the jobs reached
the broker on its steady clock (steady_wall.py), which a step of the system clock does not
move; they come from the jobs' `received_at`, which is on the spool: after a restart the
broker recovers the jobs and the groups form again with the same ages.

The broker asks when the next group is due on every loop turn and each destination's depth
on every report: walking 10,000 held groups (a hospital's ongoing studies) for those cost
about 28 ms a turn. Due times are a heap instead (an entry per group, pushed again when a
new instance moves it later, when it comes to the top) and the depths counts kept as
deliveries come and go.

Held jobs take at most HELD_SHARE of `queue.max_jobs` and `queue.max_bytes`: a study held
for an hour filled the whole queue before, and every sender, for every destination, heard
0xA700 until it was stable. Past the share only what a completion rule would hold is
refused (dispatch_state.py `refusal`); its modality retries, the rest of the traffic flows.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_BATCH = 500  # instances per batch Deliver: a large study goes as several batches
HELD_SHARE = 0.5  # of the queue's limits that held jobs may take


@dataclass(frozen=True)
class CompletionPolicy:
    stable_for: float
    deadline: float
    destinations: frozenset[str]  # those of the rule: other destinations do not wait


@dataclass
class HeldGroup:
    deliveries: list[Any] = field(default_factory=list)
    first_received: float = float("inf")
    last_received: float = 0.0
    entry: int = -1  # the sequence number of its live heap entry (others are stale)
    scheduled: float = float("inf")  # that entry's due time: never later than the real one


class GroupHolds:
    def __init__(self, policies: Mapping[str, CompletionPolicy]) -> None:
        self.policies = dict(policies)  # by rule name
        self.groups: dict[tuple[str, str], HeldGroup] = {}  # change through the methods
        self._heap: list[tuple[float, int, tuple[str, str]]] = []  # (due, entry, key)
        self._sequence = itertools.count()
        self._depth: Counter[str] = Counter()  # deliveries held, by destination
        self._held_jobs: Counter[str] = Counter()  # deliveries held, by job id
        self.held_bytes = 0  # the size of the jobs held (each once)

    def adopt(self, previous: GroupHolds) -> None:
        """Take over the groups held under the previous config (a reload): they keep
        waiting, due by the new rules (a rule gone releases them now)."""
        self.groups, self._depth = previous.groups, previous._depth
        self._held_jobs, self.held_bytes = previous._held_jobs, previous.held_bytes
        self._heap = []
        for key, held in self.groups.items():
            self._schedule(key, held, self._due_at(key))

    def _group(self, delivery: Any) -> str:
        """The group that holds this delivery: of the job's completion rules (several when
        `continue: true` rules matched), the first that routed it to its destination (the
        job's routes; for a job recorded without them, the first whose rule forwards there
        now); '' when none does. By the routes, a reload that changed the rule's forward
        does not release what the rule routed before it (recovered after a restart)."""
        return "" if delivery.batch else self._group_of(delivery.job, delivery.destination)

    def _group_of(self, job: Any, destination: str) -> str:
        routed = job.routed_by(destination)  # None: recorded without routes
        for group in job.groups or ((job.group,) if job.group else ()):
            rule = group.split("|", 1)[0]
            policy = self.policies.get(rule)
            if policy is None:
                continue  # the rule went away in a reload
            held = (rule in routed if routed is not None
                    else destination in policy.destinations)
            if held:
                return str(group)
        return ""

    def hold(self, delivery: Any, arrived: float) -> bool:
        """Keep a delivery of a completion rule's group; False: it goes to the queue now.
        `arrived`: when its job reached the broker, on the steady clock."""
        group = self._group(delivery)
        if not group:
            return False
        self.hold_in(group, delivery, arrived)
        return True

    def would_hold(self, job: Any) -> bool:
        """Whether a completion rule would hold a new job at one of its destinations."""
        return any(self._group_of(job, destination) for destination in job.destinations)

    @property
    def held_jobs(self) -> int:
        return len(self._held_jobs)

    def hold_in(self, group: str, delivery: Any, arrived: float) -> None:
        """Keep a delivery in `group` at its destination (also a group moved there whole
        from another destination: a drain or a fallback), due by its jobs' arrivals."""
        key = (delivery.destination, group)
        held = self.groups.setdefault(key, HeldGroup())
        held.deliveries.append(delivery)
        held.first_received = min(held.first_received, arrived)
        held.last_received = max(held.last_received, arrived)
        self._depth[delivery.destination] += 1
        if not self._held_jobs[delivery.job.job_id]:
            self.held_bytes += delivery.job.size
        self._held_jobs[delivery.job.job_id] += 1
        due = self._due_at(key)
        if due < held.scheduled:  # sooner (a new group, an older job recovered): push now
            self._schedule(key, held, due)

    def _schedule(self, key: tuple[str, str], held: HeldGroup, due: float) -> None:
        held.entry, held.scheduled = next(self._sequence), due
        heapq.heappush(self._heap, (due, held.entry, key))
        if len(self._heap) > 2 * len(self.groups) + 64:  # stale entries: drop them at once
            self._heap = [e for e in self._heap if self._live(e)]
            heapq.heapify(self._heap)

    def _live(self, entry: tuple[float, int, tuple[str, str]]) -> bool:
        held = self.groups.get(entry[2])
        return held is not None and held.entry == entry[1]

    def _top(self) -> tuple[float, tuple[str, str]] | None:
        """The group due first, and when: stale entries dropped, and an entry a later
        instance moved later pushed again at its real time."""
        while self._heap:
            entry = self._heap[0]
            if not self._live(entry):
                heapq.heappop(self._heap)
                continue
            due = self._due_at(entry[2])
            if due > entry[0]:
                heapq.heappop(self._heap)
                self._schedule(entry[2], self.groups[entry[2]], due)
                continue
            return due, entry[2]
        return None

    def _due_at(self, key: tuple[str, str]) -> float:
        held = self.groups[key]
        policy = self.policies.get(key[1].split("|", 1)[0])
        if policy is None:  # the rule went away in a reload: release now
            return 0.0
        return min(held.last_received + policy.stable_for, held.first_received + policy.deadline)

    def due(self, now: float) -> list[tuple[str, list[Any]]]:
        """Groups ready to go at `now` (the steady clock): (destination, deliveries in
        instance order), removed here."""
        ready = []
        while (top := self._top()) is not None and top[0] <= now:
            heapq.heappop(self._heap)
            held = self._pop(top[1])
            ordered = sorted(held.deliveries,
                             key=lambda d: (d.job.instance_number, d.job.received_at))
            ready.append((top[1][0], ordered))
        return ready

    def next_due(self) -> float | None:
        """When the next group becomes due, on the steady clock."""
        top = self._top()
        return top[0] if top is not None else None

    def depth(self, destination: str) -> int:
        return self._depth.get(destination, 0)

    def take(self, destination: str) -> list[Any]:
        """Remove and return every delivery held for `destination` (a removal)."""
        return [d for _, held in self.take_groups(destination) for d in held]

    def take_groups(self, destination: str) -> list[tuple[str, list[Any]]]:
        """Remove and return the groups held for `destination`, each (group, deliveries),
        to move them whole (a drain, a fallback)."""
        return [(key[1], self._pop(key).deliveries)
                for key in [k for k in self.groups if k[0] == destination]]

    def _pop(self, key: tuple[str, str]) -> HeldGroup:
        held = self.groups.pop(key)  # its heap entries are stale from now on
        left = self._depth[key[0]] - len(held.deliveries)
        if left:
            self._depth[key[0]] = left
        else:
            del self._depth[key[0]]
        for delivery in held.deliveries:
            job = delivery.job
            self._held_jobs[job.job_id] -= 1
            if not self._held_jobs[job.job_id]:
                del self._held_jobs[job.job_id]
                self.held_bytes -= job.size
        return held
