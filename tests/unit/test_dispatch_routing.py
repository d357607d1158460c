"""router/broker/dispatch.py with priorities, time windows and study/series completion batches."""

from __future__ import annotations

from datetime import datetime, time

import pytest

from router.broker.completion import CompletionPolicy, GroupHolds
from router.broker.deliveries import DeadLetter, DestinationPolicy, Retry, Settled
from router.broker.dispatch import Dispatcher
from router.core.messages import Result
from router.core.time_window import TimeWindow

from .helpers import answer_batch, make_header
from .test_dispatch import RETRY, W1, ok, sent

NOON = datetime(2026, 12, 1, 12, 0)


class Clock:
    def __init__(self, wall: float = 1_700_000_000.0, local: datetime = NOON) -> None:
        self.wall_now, self.local_now = wall, local
        self.stepped = 0.0  # what step() moved the system clock by, in all

    def wall(self) -> float:
        return self.wall_now

    def steady(self) -> float:
        """The broker's steady clock (router/broker/steady_wall.py): a step leaves it."""
        return self.wall_now - self.stepped

    def step(self, seconds: float) -> None:
        """The system clock steps (an NTP step after a VM resumed); time goes on as before."""
        self.wall_now += seconds
        self.stepped += seconds

    def local(self) -> datetime:
        return self.local_now


def dispatcher(clock: Clock, *, window: TimeWindow | None = None,
               holds: GroupHolds | None = None, parallel: int = 4) -> Dispatcher:
    policies = {"pacs": DestinationPolicy(parallel, RETRY, window, max_associations=parallel)}
    return Dispatcher(policies, max_jobs=100, max_bytes=10**9, rand=lambda: 0.0, holds=holds,
                      wall=clock.wall, local=clock.local, steady=clock.steady)


def test_urgent_jobs_jump_the_queue_and_each_priority_keeps_its_order() -> None:
    d = dispatcher(Clock(), parallel=1)
    for job_id, priority in [("n1", 2), ("low", 3), ("n2", 2), ("urgent", 0), ("high", 1)]:
        d.add_job(make_header(job_id, priority=priority))
    d.worker_ready(W1, 10, 0.0)
    order = []
    while sends := d.dispatch(0.0):
        (_, delivery), = sends
        order.append([job.job_id for job in delivery.jobs])
        answer_batch(d, W1, "pacs", [ok(job, "pacs") for job in delivery.jobs], 0.0)
    # Jobs of one priority next to each other go as one run over one association.
    assert order == [["urgent"], ["high"], ["n1", "n2"], ["low"]]


def test_a_closed_window_holds_the_queue_until_it_opens() -> None:
    clock = Clock(local=datetime(2026, 12, 1, 12, 0))
    d = dispatcher(clock, window=TimeWindow(time(20, 0), time(6, 0)))
    d.add_job(make_header("j1"))
    d.worker_ready(W1, 4, 0.0)
    assert d.dispatch(0.0) == []
    assert d.next_due(0.0) == 8 * 3600  # seconds until 20:00
    clock.local_now = datetime(2026, 12, 1, 23, 30)  # open across midnight
    assert sent(d.dispatch(1.0)) == [("j1", "pacs")]
    clock.local_now = datetime(2026, 12, 2, 6, 0)
    d.add_job(make_header("j2"))
    assert d.dispatch(2.0) == []  # 06:00 is the end: closed again


def test_an_open_window_is_no_reason_to_wake_the_broker() -> None:
    """The broker sleeps until next_due(): an open window counted as due now, so while a
    windowed destination's queue could not go (down, paused, at its limit) the loop woke
    every millisecond for as long as that lasted."""
    clock = Clock(local=datetime(2026, 12, 1, 12, 0))
    d = dispatcher(clock, window=TimeWindow(time(8, 0), time(18, 0)))
    d.add_job(make_header("j1"))
    d.held.add("pacs")  # an operator paused it: nothing can go until resumed
    d.worker_ready(W1, 4, 0.0)
    assert d.dispatch(0.0) == []
    assert d.next_due(0.0) is None
    d.held.discard("pacs")
    assert sent(d.dispatch(1.0)) == [("j1", "pacs")]


def completion(clock: Clock, stable: float = 30, deadline: float = 300) -> Dispatcher:
    holds = GroupHolds({"series": CompletionPolicy(stable, deadline, frozenset({"pacs"}))})
    return dispatcher(clock, holds=holds)


def test_a_group_waits_until_stable_then_goes_as_one_batch_in_instance_order() -> None:
    clock = Clock()
    d = completion(clock)
    t0 = clock.wall_now
    for job_id, number, at in [("a", 3, t0), ("b", 1, t0 + 5), ("c", 2, t0 + 10)]:
        clock.wall_now = at  # each reaches the broker as it is received
        d.add_job(make_header(job_id, group="series|1.2.3", instance_number=number,
                              received_at=at))
    d.add_job(make_header("other"))  # no group: goes at once
    d.worker_ready(W1, 4, 0.0)
    assert sent(d.dispatch(0.0)) == [("other", "pacs")]
    assert d.depth("pacs") == 3
    clock.wall_now = t0 + 39
    assert d.dispatch(1.0) == []
    assert d.next_due(1.0) == 2.0  # t0 + 10 + 30 is one second away
    clock.wall_now = t0 + 40
    (_, batch), = d.dispatch(2.0)
    assert [j.job_id for j in batch.jobs] == ["b", "c", "a"]
    outcomes = answer_batch(d, W1, "pacs", [ok(j, "pacs") for j in batch.jobs], 3.0)
    assert {o.job.job_id for o in outcomes if isinstance(o, Settled)} == {"b", "c", "a"}


@pytest.mark.parametrize("step", [-7200.0, 7200.0])
def test_a_step_of_the_system_clock_neither_holds_a_group_for_hours_nor_releases_it_early(
        step: float) -> None:
    """Groups waited by the system clock: stepped back two hours, a series stable for 30 s
    waited two hours more (its later instances, stamped "earlier", did not move it);
    stepped forward, it went at once, before its last instance had arrived."""
    clock = Clock()
    d = completion(clock)
    t0 = clock.wall_now
    d.add_job(make_header("a", group="series|1.2.3", instance_number=2, received_at=t0))
    d.worker_ready(W1, 4, 0.0)
    clock.wall_now += 20
    clock.step(step)
    assert d.dispatch(1.0) == []
    d.add_job(make_header("b", group="series|1.2.3", instance_number=1,
                          received_at=clock.wall_now))
    clock.wall_now += 29
    assert d.dispatch(2.0) == []
    assert d.next_due(2.0) == 3.0  # stable 30 s after b, not 2 h (or 0 s) away
    clock.wall_now += 1
    (_, batch), = d.dispatch(3.0)
    assert [j.job_id for j in batch.jobs] == ["b", "a"]


def test_a_job_stamped_before_the_clock_stepped_back_waits_its_hold_not_the_step() -> None:
    """Recovered at a start after the clock stepped back two hours while the router was
    down: its received_at is "in the future", and its group waited two hours more."""
    clock = Clock()
    d = completion(clock)
    d.add_job(make_header("a", group="series|1.2.3", received_at=clock.wall_now + 7200),
              exclusive=False)
    d.worker_ready(W1, 4, 0.0)
    assert d.dispatch(0.0) == [] and d.next_due(0.0) == 30.0
    clock.wall_now += 30
    assert sent(d.dispatch(30.0)) == [("a", "pacs")]


def test_each_destination_is_held_by_the_completion_rule_that_routed_it_there() -> None:
    """A series rule (continue: true) for ai and a study rule for archive: the job's group
    was the series rule's only, so archive got every instance at once."""
    clock = Clock()
    holds = GroupHolds({"ai": CompletionPolicy(30, 300, frozenset({"ai"})),
                        "arch": CompletionPolicy(600, 3600, frozenset({"archive"}))})
    policies = {name: DestinationPolicy(4, RETRY, max_associations=4)
                for name in ("ai", "archive")}
    d = Dispatcher(policies, max_jobs=100, max_bytes=10**9, rand=lambda: 0.0, holds=holds,
                   wall=clock.wall, local=clock.local, steady=clock.steady)
    t0 = clock.wall_now
    for job_id, number in [("a", 2), ("b", 1)]:
        d.add_job(make_header(job_id, ("ai", "archive"), group="ai|S1",
                              groups=("ai|S1", "arch|ST1"), instance_number=number,
                              received_at=t0))
    d.worker_ready(W1, 4, 0.0)
    assert d.dispatch(0.0) == []
    assert (d.depth("ai"), d.depth("archive")) == (2, 2)
    clock.wall_now = t0 + 30  # the series is stable: ai gets it, archive waits for the study
    (_, batch), = d.dispatch(1.0)
    assert batch.destination == "ai" and [j.job_id for j in batch.jobs] == ["b", "a"]
    assert d.depth("archive") == 2
    clock.wall_now = t0 + 600
    (_, batch), = d.dispatch(2.0)
    assert batch.destination == "archive" and [j.job_id for j in batch.jobs] == ["b", "a"]


def test_a_job_is_held_by_the_rule_that_routed_it_even_after_its_forward_changed() -> None:
    """A reload moved the completion rule's forward from pacs to archive; the jobs it had
    routed to pacs (recovered after a restart) went to pacs at once, without their hold.
    The job's routes say which rule sent it where; a job recorded without them goes by the
    rule's forward as before."""
    clock = Clock()
    holds = GroupHolds({"series": CompletionPolicy(30, 300, frozenset({"archive"}))})
    d = dispatcher(clock, holds=holds)
    t0 = clock.wall_now
    d.add_job(make_header("routed", group="series|1.2.3", routes=("pacs=series",),
                          received_at=t0))
    d.add_job(make_header("old", group="series|1.2.3", received_at=t0))  # no routes
    d.worker_ready(W1, 4, 0.0)
    assert sent(d.dispatch(0.0)) == [("old", "pacs")]
    assert d.depth("pacs") == 1
    clock.wall_now = t0 + 30
    (_, batch), = d.dispatch(1.0)
    assert [j.job_id for j in batch.jobs] == ["routed"]


def test_the_deadline_releases_a_group_that_never_settles() -> None:
    clock = Clock()
    d = completion(clock, stable=30, deadline=100)
    t0 = clock.wall_now
    for i in range(12):  # a new instance every 10 s: never stable
        d.add_job(make_header(f"j{i}", group="series|9", instance_number=i,
                              received_at=t0 + 10 * i))
    clock.wall_now = t0 + 100
    d.worker_ready(W1, 4, 0.0)
    (_, batch), = d.dispatch(0.0)
    assert batch.size == 12


def test_a_batch_failing_at_the_destination_goes_back_whole_and_failures_retry_alone() -> None:
    clock = Clock()
    d = completion(clock, stable=1)
    t0 = clock.wall_now
    jobs = [make_header(f"j{i}", group="series|7", instance_number=i, received_at=t0)
            for i in range(4)]
    for job in jobs:
        d.add_job(job)
    clock.wall_now = t0 + 2
    d.worker_ready(W1, 4, 0.0)
    d.dispatch(0.0)
    results = [ok(jobs[0], "pacs"),
               Result("j1", "pacs", False, "status", False, "0xA900 refused"),
               Result("j2", "pacs", False, "connection", True, "down")]
    outcomes = answer_batch(d, W1, "pacs", results, 1.0)
    assert any(isinstance(o, DeadLetter) and o.delivery.job.job_id == "j1" for o in outcomes)
    pause = next(o for o in outcomes if isinstance(o, Retry))
    assert [j.job_id for j in pause.delivery.jobs] == ["j2", "j3"]  # j3 was never tried
    assert [[j.job_id for j in q.jobs] for q in d.queues["pacs"]] == [["j2", "j3"]]
    assert d.in_flight["pacs"] == 0


def test_a_worker_lost_mid_batch_gives_the_batch_back() -> None:
    clock = Clock()
    d = completion(clock, stable=1)
    for i in range(3):
        d.add_job(make_header(f"j{i}", group="series|7", instance_number=i,
                              received_at=clock.wall_now))
    clock.wall_now += 5
    d.worker_ready(W1, 4, 0.0)
    d.dispatch(0.0)
    assert d.worker_gone(W1) == 3
    assert [j.job_id for j in d.queues["pacs"].popleft().jobs] == ["j0", "j1", "j2"]


def test_an_answer_to_an_earlier_brokers_delivery_does_not_settle_a_run_of_the_same_job() -> None:
    """After a broker restart a worker may still finish what the old broker sent it; its
    answer names a job the new broker has sent again, at the head of a run. Matched by job
    id alone it took the run's lease, settled one job, and left the others pending in no
    queue: never delivered, never retried (seen in test_faults' broker kill -9)."""
    d = dispatcher(Clock(), parallel=1)
    jobs = [make_header(f"j{i}") for i in range(4)]
    for job in jobs:
        d.add_job(job)
    d.worker_ready(W1, 4, 0.0)
    (_, run), = d.dispatch(0.0)
    assert [j.job_id for j in run.jobs] == ["j0", "j1", "j2", "j3"]
    stale = Result("j0", "pacs", True, lease=run.lease + 12345)  # the old broker's token
    assert d.result(W1, stale, 1.0) == []
    outcomes = answer_batch(d, W1, "pacs", [ok(job, "pacs") for job in run.jobs], 2.0)
    assert outcomes == [Settled(job) for job in jobs]
    assert d.jobs == {}
