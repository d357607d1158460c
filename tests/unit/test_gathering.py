"""router/broker/gathering.py with the dispatcher: a young, short queue waits up to
`linger` to go as one run; nothing urgent, long or old waits. Clock values are passed in."""

from __future__ import annotations

from router.broker.deliveries import Delivery, DestinationPolicy
from router.broker.dispatch import Dispatcher
from router.broker.gathering import GATHER_JOBS
from router.core.config import RetryConfig
from router.core.messages import Result
from router.core.priority import URGENT

from .helpers import answer, answer_batch, make_header

W1 = b"worker-1"
LINGER = 0.01


def dispatcher(linger: float = LINGER) -> Dispatcher:
    d = Dispatcher({"pacs": DestinationPolicy(4, RetryConfig())}, 1000, 10**12, linger=linger)
    d.worker_ready(W1, 4, 0.0)
    return d


def jobs_sent(sends: list[tuple[bytes, Delivery]]) -> list[list[str]]:
    return [[j.job_id for j in (delivery.jobs or (delivery.job,))] for _, delivery in sends]


def test_a_short_young_queue_waits_then_goes_as_one_run() -> None:
    d = dispatcher()
    d.add_job(make_header("j0"))
    assert d.dispatch(0.000) == []  # the first job starts the gathering
    assert d.next_due(0.000) == LINGER  # the broker wakes up for it
    d.add_job(make_header("j1"))
    d.add_job(make_header("j2"))
    assert d.dispatch(0.005) == []
    sends = d.dispatch(LINGER)
    assert jobs_sent(sends) == [["j0", "j1", "j2"]]
    answer_batch(d, W1, "pacs", [Result(j, "pacs", True) for j in jobs_sent(sends)[0]],
                 LINGER + 0.0005)
    d.add_job(make_header("j3"))  # the queue was emptied: the next job gathers afresh
    assert d.dispatch(LINGER + 0.001) == []
    assert jobs_sent(d.dispatch(2 * LINGER + 0.001)) == [["j3"]]


def test_a_full_run_or_an_urgent_job_goes_at_once() -> None:
    d = dispatcher()
    for i in range(GATHER_JOBS):
        d.add_job(make_header(f"j{i}"))
    assert jobs_sent(d.dispatch(0.0)) == [[f"j{i}" for i in range(GATHER_JOBS)]]
    d = dispatcher()
    d.add_job(make_header("urgent", priority=URGENT))
    assert jobs_sent(d.dispatch(0.0)) == [["urgent"]]


def test_linger_zero_sends_each_job_at_once() -> None:
    d = dispatcher(linger=0.0)
    d.add_job(make_header("j0"))
    assert jobs_sent(d.dispatch(0.0)) == [["j0"]]
    assert d.next_due(0.0) is None


def test_gathering_jobs_do_not_raise_the_association_limit() -> None:
    """Slow start raises the limit after a delivery while work waits; jobs gathering for
    their run are not such work."""
    d = dispatcher()
    d.add_job(make_header("j0"))
    d.dispatch(0.0)
    (identity, _), = d.dispatch(LINGER)
    d.add_job(make_header("j1"))
    d.dispatch(LINGER + 0.001)  # j1 gathers
    answer(d, identity, Result("j0", "pacs", True), LINGER + 0.002)
    assert d.concurrency["pacs"].limit == 1
    assert d.limit_changes == []
