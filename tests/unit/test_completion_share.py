"""Held jobs take at most half of the queue's limits (router/broker/completion.py): a study
held until stable filled `queue.max_jobs`, and every sender, for every destination, was
refused with 0xA700 until it was stable (stable_for may be an hour)."""

from __future__ import annotations

from router.broker.completion import CompletionPolicy, GroupHolds
from router.broker.deliveries import DestinationPolicy
from router.broker.dispatch import Dispatcher
from router.core.config import RetryConfig
from router.core.messages import JobHeader, Result

from .helpers import make_header

W1 = b"worker-1"
RETRY = RetryConfig(max_attempts=5, initial_delay=1.0, max_delay=8.0)
T0 = 1_700_000_000.0


class Clock:
    now = T0

    def read(self) -> float:
        return self.now


def make(max_jobs: int, max_bytes: int = 10**12, clock: Clock | None = None) -> Dispatcher:
    clock = clock or Clock()
    holds = GroupHolds({"ai": CompletionPolicy(30.0, 600.0, frozenset({"ai"}))})
    policies = {n: DestinationPolicy(1000, RETRY) for n in ("ai", "pacs")}
    return Dispatcher(policies, max_jobs, max_bytes, rand=lambda: 0.0, holds=holds,
                      wall=clock.read, steady=clock.read)


def held(n: int, size: int = 100) -> JobHeader:
    return make_header(f"held-{n}", ("ai",), size=size, group="ai|1.2.3", instance_number=n,
                       received_at=T0)


def plain(n: int, size: int = 100) -> JobHeader:
    return make_header(f"plain-{n}", ("pacs",), size=size, received_at=T0)


def take(d: Dispatcher, job: JobHeader) -> str | None:
    reason = d.refusal(job)
    if reason is None:
        d.add_job(job)
    return reason


def test_held_jobs_leave_half_of_the_queue_to_other_traffic() -> None:
    d = make(max_jobs=4)
    assert take(d, held(1)) is None and take(d, held(2)) is None
    reason = take(d, held(3))
    assert reason is not None and "completion" in reason and "2 jobs" in reason
    assert take(d, plain(1)) is None and take(d, plain(2)) is None  # the other half
    assert take(d, plain(3)) is not None  # the queue itself is full


def test_the_held_share_counts_bytes_too() -> None:
    d = make(max_jobs=100, max_bytes=1000)
    assert take(d, held(9, size=600)) is None  # with nothing held, one is taken
    d = make(max_jobs=100, max_bytes=1000)
    assert take(d, held(1, size=400)) is None
    assert take(d, held(2, size=400)) is not None  # 800 held > half of 1000
    assert take(d, plain(1, size=500)) is None


def test_a_released_group_frees_its_share() -> None:
    clock = Clock()
    d = make(max_jobs=4, clock=clock)
    take(d, held(1))
    take(d, held(2))
    assert take(d, held(3)) is not None
    clock.now = T0 + 31
    d.worker_ready(W1, 10, clock.now)
    sent = d.dispatch(clock.now)  # stable: released as one batch, no longer held
    assert [len(delivery.jobs) for _, delivery in sent] == [2]
    assert take(d, held(3)) is None  # a new group
    _, batch = sent[0]
    d.batch_result(W1, "ai", [Result(j.job_id, "ai", True) for j in batch.jobs], clock.now,
                   batch.lease)
    assert take(d, held(4)) is None and take(d, held(5)) is not None
