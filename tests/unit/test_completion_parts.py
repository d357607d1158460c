"""A completed group larger than one batch (MAX_BATCH) goes as parts one after the other
(router/broker/dispatch.py `_release_due`): the parts were queued side by side, and a
destination that takes several associations got a 1,100-instance series over two at once,
its instances interleaved (507, 1001, 508, 509, ...)."""

from __future__ import annotations

from router.broker.completion import MAX_BATCH, CompletionPolicy, GroupHolds
from router.broker.deliveries import Delivery, DestinationPolicy
from router.broker.dispatch import Dispatcher
from router.core.config import RetryConfig
from router.core.messages import JobHeader, Result

from .helpers import make_header

W1 = b"worker-1"
RETRY = RetryConfig(max_attempts=5, initial_delay=1.0, max_delay=8.0)
T0 = 1_700_000_000.0
COUNT = 2 * MAX_BATCH + 100


def dispatcher() -> Dispatcher:
    holds = GroupHolds({"ai": CompletionPolicy(30.0, 600.0, frozenset({"ai"}))})
    policies = {"ai": DestinationPolicy(8, RETRY, max_associations=8)}
    return Dispatcher(policies, 100_000, 10**12, rand=lambda: 0.0, holds=holds,
                      wall=lambda: T0 + 60, steady=lambda: T0 + 60)


def instance(n: int) -> JobHeader:
    return make_header(f"job-{n:05d}", ("ai",), group="ai|1.2.3", instance_number=n,
                       received_at=T0)


def numbers(sent: list[tuple[bytes, Delivery]]) -> list[list[int]]:
    return [[job.instance_number for job in d.jobs] for _, d in sent]


def answer(d: Dispatcher, delivery: Delivery, delivered: bool = True) -> None:
    results = [Result(job.job_id, "ai", delivered, "" if delivered else "connection",
                      not delivered) for job in delivery.jobs]
    d.batch_result(W1, "ai", results, T0 + 60, delivery.lease)


def test_the_parts_of_a_large_group_go_one_after_the_other_in_order() -> None:
    d = dispatcher()
    for n in reversed(range(1, COUNT + 1)):
        d.add_job(instance(n))
    d.worker_ready(W1, 8, T0 + 60)
    sent = d.dispatch(T0 + 60)
    assert numbers(sent) == [list(range(1, MAX_BATCH + 1))], "parts went side by side"
    assert d.dispatch(T0 + 60) == []  # the second part waits for the first
    answer(d, sent[0][1])
    second = d.dispatch(T0 + 60)
    assert numbers(second) == [list(range(MAX_BATCH + 1, 2 * MAX_BATCH + 1))]
    answer(d, second[0][1])
    assert numbers(d.dispatch(T0 + 60)) == [list(range(2 * MAX_BATCH + 1, COUNT + 1))]


def test_a_part_that_fails_goes_again_before_the_next_one() -> None:
    d = dispatcher()
    for n in range(1, COUNT + 1):
        d.add_job(instance(n))
    d.worker_ready(W1, 8, T0 + 60)
    first = d.dispatch(T0 + 60)[0][1]
    answer(d, first, delivered=False)  # the destination went away: the part waits in front
    d.paused_until["ai"] = 0.0
    again = d.dispatch(T0 + 60)
    assert numbers(again) == [list(range(1, MAX_BATCH + 1))]
