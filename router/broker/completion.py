"""Study and series completion: a rule with `complete` holds what it routes until the study
(or series) is stable, then releases it to each destination as one batch in instance order.

Stable means no new instance of the group for `stable_for` seconds; `deadline` seconds after
its first instance a group is released whatever happens. The times come from the jobs'
`received_at`, which is on the spool: after a restart the broker recovers the jobs and the
groups form again with the same clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_BATCH = 500  # instances per batch Deliver: a large study goes as several batches


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


class GroupHolds:
    def __init__(self, policies: Mapping[str, CompletionPolicy]) -> None:
        self.policies = dict(policies)  # by rule name
        self.groups: dict[tuple[str, str], HeldGroup] = {}

    def _group(self, delivery: Any) -> str:
        """The group that holds this delivery: of the job's completion rules (several when
        `continue: true` rules matched), the first that routed it to its destination (the
        job's routes; for a job recorded without them, the first whose rule forwards there
        now); '' when none does. By the routes, a reload that changed the rule's forward
        does not release what the rule routed before it (recovered after a restart)."""
        job = delivery.job
        if delivery.batch:
            return ""
        routed = job.routed_by(delivery.destination)  # None: recorded without routes
        for group in job.groups or ((job.group,) if job.group else ()):
            rule = group.split("|", 1)[0]
            policy = self.policies.get(rule)
            if policy is None:
                continue  # the rule went away in a reload
            held = (rule in routed if routed is not None
                    else delivery.destination in policy.destinations)
            if held:
                return str(group)
        return ""

    def hold(self, delivery: Any) -> bool:
        """Keep a delivery of a completion rule's group; False: it goes to the queue now."""
        group = self._group(delivery)
        if not group:
            return False
        held = self.groups.setdefault((delivery.destination, group), HeldGroup())
        held.deliveries.append(delivery)
        held.first_received = min(held.first_received, delivery.job.received_at)
        held.last_received = max(held.last_received, delivery.job.received_at)
        return True

    def _due_at(self, key: tuple[str, str]) -> float:
        held = self.groups[key]
        policy = self.policies.get(key[1].split("|", 1)[0])
        if policy is None:  # the rule went away in a reload: release now
            return 0.0
        return min(held.last_received + policy.stable_for, held.first_received + policy.deadline)

    def due(self, wall_now: float) -> list[tuple[str, list[Any]]]:
        """Groups ready to go: (destination, deliveries in instance order), removed here."""
        ready = []
        for key in [k for k in self.groups if self._due_at(k) <= wall_now]:
            held = self.groups.pop(key)
            ordered = sorted(held.deliveries,
                             key=lambda d: (d.job.instance_number, d.job.received_at))
            ready.append((key[0], ordered))
        return ready

    def next_due(self) -> float | None:
        """The wall-clock time the next group becomes due."""
        return min((self._due_at(k) for k in self.groups), default=None)

    def depth(self, destination: str) -> int:
        return sum(len(h.deliveries) for (d, _), h in self.groups.items() if d == destination)

    def discard_job(self, job_id: str) -> None:
        for held in self.groups.values():
            held.deliveries = [d for d in held.deliveries if d.job.job_id != job_id]
