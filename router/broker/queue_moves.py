"""Moving queued work between destinations inside the broker's Dispatcher (no sockets).

Used by operator control (router/broker/control.py): drain-to and fallback, and a reload that
removes a destination (its queue given up). A job moved from A to B has its header on the
spool rewritten first (atomically, fsync'd) to name B instead of A, so that a crash at any
point leaves each job either wholly at A or wholly at B: recovery (router/core/spool.py)
re-queues what the header names.

Deliveries leased to a worker are not moved: they finish (or fail back into A's queue).
"""

from __future__ import annotations

import dataclasses

from router.broker.deliveries import Delivery, Outcome
from router.broker.dispatch import Dispatcher
from router.core.messages import JobHeader
from router.core.spool import Spool


def take_queued(dispatcher: Dispatcher, name: str, keep_retries: int = 0,
                held: bool = True) -> list[JobHeader]:
    """Remove and return every job waiting for `name` (queue, retry delays, the spool,
    completion holds unless not `held`), urgent first, in arrival order within a priority;
    leased deliveries stay, and so do the `keep_retries` soonest delayed retries (a
    fallback's probe)."""
    found: list[JobHeader] = []
    queue = dispatcher.queues[name]
    while queue:
        found += queue.popleft().jobs
    for delivery in dispatcher.delayed.take(name, keep_retries):
        found += delivery.jobs
    found += [d.job for d in dispatcher.spool_wait.take(name)]
    if held:
        found += [d.job for d in dispatcher.holds.take(name)]
    # Later receptions of an instance still in play come after it (router/broker/instance_order).
    found += [d.job for d in dispatcher.order.take_parked(name)]
    unique: dict[str, JobHeader] = {}
    for job in found:
        state = dispatcher.jobs.get(job.job_id)
        if state is not None and name in state.pending:
            unique.setdefault(job.job_id, state.header)  # the current header, not a stale copy
    return list(unique.values())


def take_held(dispatcher: Dispatcher, name: str) -> list[tuple[str, JobHeader]]:
    """Remove and return the jobs completion holds for `name`, each with its group, to move
    as held groups: moved as queued jobs, a completed series reached the new destination one
    instance at a time in arrival order instead of as one batch in Instance Number order."""
    taken: list[tuple[str, JobHeader]] = []
    for group, deliveries in dispatcher.holds.take_groups(name):
        for delivery in deliveries:
            state = dispatcher.jobs.get(delivery.job.job_id)
            if state is not None and name in state.pending:
                taken.append((group, state.header))
    return taken


def hold_back(dispatcher: Dispatcher, name: str, held: list[tuple[str, JobHeader]]) -> None:
    """Return jobs take_held() took to their groups at `name` (a drain cut short)."""
    for group, job in held:
        dispatcher.holds.hold_in(group, Delivery(job, name), dispatcher.arrived(job))


def put_back(dispatcher: Dispatcher, name: str, jobs: list[JobHeader]) -> None:
    """Return jobs to the front of `name`'s queue, in their order; a later reception of an
    instance whose earlier one is still in play waits for it again."""
    admitted = [d for d in (Delivery(job, name) for job in jobs) if dispatcher.order.admit(d)]
    for delivery in reversed(admitted):
        dispatcher.queues[name].appendleft(delivery)


def retarget(dispatcher: Dispatcher, spool: Spool, job: JobHeader, source: str, target: str,
             held_in: str = "") -> list[Outcome]:
    """Send `job` to `target` instead of `source`: the spool's header first, then memory.
    `held_in`: the completion group it waits in at `target` (take_held), else it is queued.

    If the job already goes to `target` (pending or delivered), it is simply no longer sent
    to `source`. The caller fsyncs the jobs folder once after a series of these.
    """
    state = dispatcher.jobs[job.job_id]
    destinations = tuple(dict.fromkeys(target if d == source else d
                                       for d in state.header.destinations))
    header = dataclasses.replace(state.header, destinations=destinations,
                                 moved_from=state.header.moved(source, target))
    spool.rewrite_header(header)
    already = target in state.header.destinations
    state.header = header
    if not already:
        state.pending.add(target)
        dispatcher.oldest.add(state, (target,), dispatcher.jobs)
        delivery = Delivery(header, target)
        if not held_in:
            dispatcher._enqueue(delivery, hold=False)
        elif dispatcher.order.admit(delivery):  # else parked until the earlier reception ends
            dispatcher.holds.hold_in(held_in, delivery, dispatcher.arrived(header))
    # The source's part of the job is done with: settled once nothing else is pending.
    return dispatcher._finish(Delivery(header, source))


def give_up_queued(dispatcher: Dispatcher, name: str, reason: str, detail: str
                   ) -> list[Outcome]:
    """Every job waiting for `name` becomes a dead letter (a reload removed `name`); what is
    leased to a worker stays with it."""
    outcomes: list[Outcome] = []
    for job in take_queued(dispatcher, name):
        outcomes += dispatcher._give_up(Delivery(job, name), reason, detail)
    return outcomes


def release_now(dispatcher: Dispatcher, name: str) -> int:
    """End the backoff of `name` (retry now): its delayed retries, and its deliveries
    waiting for the spool, join its queue at once."""
    dispatcher.paused_until[name] = 0.0
    dispatcher.busy_until[name] = 0.0
    released = dispatcher.delayed.take(name)
    for delivery in released:
        if delivery.job.job_id in dispatcher.jobs:
            dispatcher.queues[name].append(delivery)
    spooled = dispatcher.spool_wait.take(name)
    for delivery in spooled:
        if delivery.job.job_id in dispatcher.jobs:
            dispatcher.queues[name].append(delivery)
    return sum(d.size for d in released) + sum(d.size for d in spooled)
