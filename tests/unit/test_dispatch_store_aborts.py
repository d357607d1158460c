"""router/broker/dispatch.py: a destination that aborts (or breaks the protocol) while an
instance is on the wire. A PACS whose storage is down keeps its whole queue; one instance
that alone makes it abort becomes a dead letter after its attempts (README "Retries")."""

from __future__ import annotations

from router.broker.deliveries import DeadLetter, Retry, Settled, backoff
from router.core.messages import JobHeader, Result

from .helpers import answer, answer_batch, make_header
from .test_dispatch import RETRY, W1, make_dispatcher, ok, sent


def aborted(job: JobHeader, *, during_store: bool = True, reason: str = "aborted") -> Result:
    return Result(job.job_id, "pacs", False, reason, True,
                  "pacs sent no C-STORE response (aborted the association before answering)",
                  during_store=during_store)


def _queued(d: object, n: int) -> list[JobHeader]:
    jobs = [make_header(f"j{i}", ("pacs",)) for i in range(n)]
    for job in jobs:
        d.add_job(job)  # type: ignore[attr-defined]
    d.worker_ready(W1, 1, now=0.0)  # type: ignore[attr-defined]
    return jobs


def test_a_destination_that_aborts_every_store_keeps_its_whole_queue() -> None:
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    _queued(d, 3)
    now, tried = 0.0, []
    for _ in range(4 * RETRY.max_attempts):
        ((_, delivery),) = d.dispatch(now=now)
        tried.append(delivery.job.job_id)
        (retry,) = answer(d, W1, aborted(delivery.job), now=now)
        assert isinstance(retry, Retry) and retry.delivery.attempt == 1  # nothing spent
        assert d.is_paused("pacs", now=now) and d.dispatch(now=now) == []  # it backs off
        now += retry.delay
    assert tried[:6] == ["j0", "j1", "j2", "j0", "j1", "j2"]  # each probe tries another
    assert d.depth("pacs") == 3 and len(d.jobs) == 3
    assert d.backoff_reason["pacs"].startswith("aborted: pacs sent no C-STORE response")


def test_the_pacs_back_after_aborting_everything_gets_the_whole_queue() -> None:
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    jobs = _queued(d, 2)
    now = 0.0
    for _ in range(5):
        ((_, delivery),) = d.dispatch(now=now)
        (retry,) = answer(d, W1, aborted(delivery.job), now=now)
        now += retry.delay
    settled = []
    while d.jobs:
        ((_, delivery),) = d.dispatch(now=now)
        settled += answer(d, W1, ok(delivery.job, "pacs"), now=now)
    assert sorted(o.job.job_id for o in settled) == sorted(j.job_id for j in jobs)
    assert all(isinstance(o, Settled) for o in settled)


def test_an_instance_that_alone_makes_the_pacs_abort_becomes_a_dead_letter() -> None:
    """Other work keeps arriving and is delivered between the poison's tries: each of its
    aborts after the first spends an attempt."""
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    (poison,) = _queued(d, 1)
    now, outcomes, arrived = 0.0, [], [poison]
    for i in range(20):
        arrived.append(make_header(f"k{i}", ("pacs",)))
        d.add_job(arrived[-1])
        while sends := d.dispatch(now=now):
            ((_, delivery),) = sends
            failing = delivery.job == poison
            outcomes += answer(d, W1, aborted(poison) if failing else ok(delivery.job, "pacs"),
                               now=now)
        now = d.next_due(now) or now
    (dead,) = [o for o in outcomes if isinstance(o, DeadLetter)]
    assert dead.delivery.job == poison and dead.reason == "aborted_retries_exhausted"
    assert dead.delivery.attempt == RETRY.max_attempts
    assert not d.jobs  # every other job arrived, the poison is settled as a dead letter
    assert {o.job.job_id for o in outcomes if isinstance(o, Settled)} == {
        j.job_id for j in arrived}


def test_an_instance_alone_in_the_queue_spends_no_attempt() -> None:
    """Nothing else was taken since its previous abort: no evidence against the instance."""
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    (job,) = _queued(d, 1)
    now = 0.0
    for _ in range(3 * RETRY.max_attempts):
        d.dispatch(now=now)
        (retry,) = answer(d, W1, aborted(job), now=now)
        assert retry.delivery.attempt == 1
        now += retry.delay


def test_the_aborted_job_goes_behind_the_queue_and_the_untried_rest_stays_in_front() -> None:
    d = make_dispatcher({"pacs": 1}, rand=lambda: 1.0)
    jobs = _queued(d, 4)
    ((_, run),) = d.dispatch(now=0.0)
    assert [j.job_id for j in run.jobs] == ["j0", "j1", "j2", "j3"]  # one run, one association
    outcomes = answer_batch(d, W1, "pacs", [ok(jobs[0], "pacs"), aborted(jobs[1])], now=0.0)
    assert [type(o) for o in outcomes] == [Settled, Retry, Retry]
    assert [r.announce for r in outcomes if isinstance(r, Retry)] == [True, False]  # log once
    assert [j.job_id for item in d.queues["pacs"] for j in item.jobs] == ["j2", "j3", "j1"]


def test_an_abort_during_negotiation_keeps_the_job_at_the_front() -> None:
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    _queued(d, 3)
    ((_, first),) = d.dispatch(now=0.0)
    (retry,) = answer(d, W1, aborted(first.job, during_store=False), now=0.0)
    assert retry.delivery.attempt == 1
    assert sent(d.dispatch(now=retry.delay)) == [("j0", "pacs")]


def test_a_protocol_violation_under_a_store_is_handled_as_an_abort() -> None:
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    _queued(d, 2)
    ((_, first),) = d.dispatch(now=0.0)
    (retry,) = answer(d, W1, aborted(first.job, reason="protocol"), now=0.0)
    assert retry.reason == "protocol" and d.is_paused("pacs", now=0.0)
    assert sent(d.dispatch(now=retry.delay)) == [("j1", "pacs")]


def test_the_backoff_of_a_destination_down_for_days_stays_capped() -> None:
    """failures_in_a_row grows once per back-off; 2.0 ** 1024 overflowed and killed the
    broker after about a thousand failed probes (3.5 days at a 300 s max_delay)."""
    assert backoff(RETRY, 5000, lambda: 1.0) == RETRY.max_delay
