"""What a broker start does with the jobs an earlier run left on the spool, and how it says
so: each is queued again, or (its destination removed from the config) becomes a dead
letter at once, and the log and the ready line give the same counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from router.broker.deliveries import DeadLetter, Outcome
from router.broker.dispatch import Dispatcher
from router.core.spool import Spool


@dataclass
class Recovery:
    """Jobs read back from the spool; `queued` of them wait for delivery, `dead_letters`
    counts the deliveries given up at once, by reason (unknown_destination)."""

    jobs: int = 0
    queued: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        text = f"{self.jobs} jobs recovered from the spool, {self.queued} queued"
        if self.dead_letters:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dead_letters.items()))
            text += f"; deliveries made dead letters at once: {reasons}"
        return text


def recover_jobs(spool: Spool, dispatcher: Dispatcher,
                 apply: Callable[[list[Outcome]], None]) -> Recovery:
    """Queue every job on the spool; `apply` writes the dead letters and settles jobs."""
    recovery = Recovery()
    for job in spool.recover():
        outcomes = dispatcher.add_job(job.header, job.delivered, exclusive=False)
        apply(outcomes)
        recovery.jobs += 1
        recovery.queued += job.header.job_id in dispatcher.jobs
        recovery.dead_letters.update(o.reason for o in outcomes if isinstance(o, DeadLetter))
    return recovery
