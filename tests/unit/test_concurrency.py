"""router/broker/concurrency.py and its use in the dispatcher: a destination's association limit is
learned (busy lowers it, a backlog raises it), a worker's idle association is reused before a
new one is opened, and a busy answer spends no attempt."""

from __future__ import annotations

from router.broker.concurrency import IDLE_MARGIN, Concurrency
from router.broker.deliveries import DestinationPolicy, Retry
from router.broker.dispatch import BUSY_HOLD_SECONDS, Dispatcher
from router.core.config import RetryConfig
from router.core.messages import Result

from .helpers import answer, answer_batch, make_header

W1, W2 = b"w1", b"w2"
RETRY = RetryConfig(max_attempts=3, initial_delay=1.0, max_delay=8.0)


def test_starts_at_one_association_and_reuses_it() -> None:
    c = Concurrency(ceiling=4)
    first = c.choose({W1: 4, W2: 4}, 0.0)
    assert first is not None and first.new_association and first.others_open == 0
    assert c.choose({W1: 3, W2: 4}, 0.0) is None  # limit 1, in use
    c.finished(first.worker, "", 1.0)
    again = c.choose({W1: 4, W2: 4}, 1.5)
    # Same worker, its idle association, although the other worker has as many credits.
    assert again is not None and again.worker == first.worker and not again.new_association


def test_an_idle_association_stops_counting_as_open_without_more_work() -> None:
    """The status's open associations are read while nothing is sent (an idle or paused
    destination): they showed the last association for ever, though the worker had released
    it after idle_timeout."""
    c = Concurrency(ceiling=4, idle_timeout=2.0)
    first = c.choose({W1: 4}, 0.0)
    assert first is not None
    c.finished(first.worker, "", 1.0)
    assert c.open_at(1.5) == 1
    assert c.open_at(1.0 + 2.0 + IDLE_MARGIN + 0.1) == 0


def test_a_backlog_raises_the_limit_up_to_the_ceiling() -> None:
    c = Concurrency(ceiling=2)
    choice = c.choose({W1: 4}, 0.0)
    assert choice is not None and choice.new_association
    c.finished(W1, "", 0.1, opened=True)  # the first association proved itself
    assert c.delivered(backlog=5, now=0.1) and c.limit == 2
    assert not c.delivered(backlog=5, now=0.2)  # the second association is not open yet
    assert c.choose({W1: 4}, 0.2) is not None and c.choose({W1: 3}, 0.2) is not None
    c.finished(W1, "", 0.3)
    assert not c.delivered(backlog=5, now=0.3) and c.limit == 2  # the ceiling


def test_busy_drops_to_what_is_open_and_holds_probing() -> None:
    c = Concurrency(ceiling=4, limit=2, probe_interval=60.0)
    a = c.choose({W1: 4, W2: 4}, 0.0)
    b = c.choose({W1: 3, W2: 4}, 0.0)
    assert a is not None and b is not None and b.others_open == 1
    assert c.busy(b.worker, 1.0) and c.limit == 1
    c.finished(a.worker, "", 2.0, opened=True)
    assert not c.delivered(backlog=9, now=30.0)  # no probe within probe_interval
    assert c.delivered(backlog=9, now=61.5) and c.limit == 2


def test_one_probe_at_a_time() -> None:
    c = Concurrency(ceiling=4)
    assert c.choose({W1: 4}, 0.0) is not None
    c.finished(W1, "", 0.1, opened=True)
    assert c.delivered(backlog=9, now=0.1) and c.limit == 2
    old = c.choose({W1: 4}, 0.2)
    probe = c.choose({W1: 3}, 0.2)
    assert old is not None and not old.new_association
    assert probe is not None and probe.new_association
    c.finished(W1, "", 0.3)  # the old association delivered: the probe is still unproven
    assert not c.delivered(backlog=9, now=0.3) and c.limit == 2


def test_busy_never_goes_below_one_and_pinned_never_learns() -> None:
    c = Concurrency(ceiling=4)
    choice = c.choose({W1: 1}, 0.0)
    assert choice is not None
    c.busy(W1, 0.5)
    assert c.limit == 1
    pinned = Concurrency(ceiling=3, pinned=True)
    assert pinned.limit == 3
    assert not pinned.busy(W1, 0.0) and pinned.limit == 3
    assert not pinned.delivered(backlog=9, now=100.0)


def test_an_idle_association_is_forgotten_after_the_workers_idle_timeout() -> None:
    c = Concurrency(ceiling=1, idle_timeout=2.0)
    first = c.choose({W1: 4, W2: 1}, 0.0)
    assert first is not None and first.worker == W1
    c.finished(W1, "", 1.0)
    # W1 has no credit: W2 may not open a second association while W1's may be open...
    assert c.choose({W1: 0, W2: 4}, 2.0) is None
    # ...but once W1 has surely released it, W2 may.
    later = c.choose({W1: 0, W2: 4}, 1.0 + 2.0 + IDLE_MARGIN + 0.1)
    assert later is not None and later.worker == W2 and later.new_association


def test_a_lost_association_is_not_counted_as_open() -> None:
    c = Concurrency(ceiling=1)
    assert c.choose({W1: 1}, 0.0) is not None
    c.finished(W1, "aborted", 0.5)
    assert c.total_open == 0
    c2 = Concurrency(ceiling=1)
    assert c2.choose({W1: 1}, 0.0) is not None
    c2.finished(W1, "status", 0.5)  # a failure status: the association is still there
    assert c2.total_open == 1


def learning_dispatcher(ceiling: int = 4) -> Dispatcher:
    return Dispatcher({"pacs": DestinationPolicy(ceiling, RETRY)}, max_jobs=100,
                      max_bytes=10**9, rand=lambda: 0.0)


def test_busy_requeues_without_spending_an_attempt() -> None:
    d = learning_dispatcher()
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 4, 0.0)
    (_, delivery), = d.dispatch(0.0)
    outcomes = answer(d, W1, Result("j1", "pacs", False, "busy", True, "busy"), 1.0)
    assert [type(o) for o in outcomes] == [Retry]
    assert d.failures_in_a_row["pacs"] == 0 and not d.is_paused("pacs", 1.0)
    # Nothing of ours is open: wait a moment, then the same attempt goes again.
    assert d.dispatch(1.0) == []
    (_, again), = d.dispatch(1.0 + BUSY_HOLD_SECONDS)
    assert again.job.job_id == "j1" and again.attempt == delivery.attempt == 1


def test_a_long_queue_to_a_single_association_goes_in_runs() -> None:
    d = learning_dispatcher()
    for i in range(40):
        d.add_job(make_header(f"j{i}"))
    d.worker_ready(W1, 4, 0.0)
    d.worker_ready(W2, 4, 0.0)
    (worker, run), = d.dispatch(0.0)  # limit 1: one association, one run of 32
    assert len(run.jobs) == 32 and run.others_open == 0
    outcomes = answer_batch(d, worker, "pacs", [Result(j.job_id, "pacs", True)
                                               for j in run.jobs], 1.0)
    assert len(outcomes) == 32 and d.concurrency["pacs"].limit == 2  # a backlog: probe up
    sends = d.dispatch(1.0)
    assert [len(s.jobs) for _, s in sends] == [4, 1]
    # The first reuses the idle association; the probe opens a second one, told that one is
    # open already (so the worker tells busy from down with a short wait), and carries one
    # job: if the destination leaves it unanswered, one job waits busy_timeout, not a run.
    assert sends[0][0] == worker and [s.others_open for _, s in sends] == [0, 1]
    assert d.limit_changes == [("pacs", 1, 2, "probe")]
