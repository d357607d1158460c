"""router/broker/dispatch.py: the broker's I/O-free state machine (see its module docstring)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from router.broker.deliveries import (
    DeadLetter,
    Delivery,
    DestinationPolicy,
    Retry,
    Settled,
    backoff,
)
from router.broker.dispatch import Dispatcher
from router.broker.dispatch_state import WORKER_LEASE_SECONDS
from router.core.config import RetryConfig
from router.core.messages import JobHeader, Result

from .helpers import answer, make_header

W1 = b"worker-1"
W2 = b"worker-2"
RETRY = RetryConfig(max_attempts=3, initial_delay=1.0, max_delay=8.0)


def make_dispatcher(
    parallel: dict[str, int] | None = None,
    *,
    retry: RetryConfig = RETRY,
    max_jobs: int = 1000,
    max_bytes: int = 10**9,
    rand: Callable[[], float] = lambda: 0.0,
) -> Dispatcher:
    parallel = {"pacs": 4, "archive": 4} if parallel is None else parallel
    # Pinned limits: these tests are about queues, credits and retries, not learning.
    policies = {name: DestinationPolicy(n, retry, max_associations=n)
                for name, n in parallel.items()}
    return Dispatcher(policies, max_jobs=max_jobs, max_bytes=max_bytes, rand=rand)


def ok(job: JobHeader, destination: str) -> Result:
    return Result(job.job_id, destination, True)


def failed(job: JobHeader, destination: str, reason: str = "dimse_timeout", *,
           transient: bool = True, detail: str = "refused") -> Result:
    return Result(job.job_id, destination, False, reason, transient, detail)


def sent(sends: list[tuple[bytes, Delivery]]) -> list[tuple[str, str]]:
    return [(d.job.job_id, d.destination) for _, d in sends]


# --- jobs and settling -------------------------------------------------------------------------


def test_add_job_queues_once_per_destination() -> None:
    d = make_dispatcher()
    job = make_header("j1", ("pacs", "archive"), size=300)

    assert d.add_job(job) == []

    assert [x.job for x in d.queues["pacs"]] == [job]
    assert [x.job for x in d.queues["archive"]] == [job]
    assert all(x.attempt == 1 for q in d.queues.values() for x in q)
    assert d.jobs["j1"].pending == {"pacs", "archive"}
    assert d.queued_bytes == 300
    assert d.depth("pacs") == d.depth("archive") == 1


def test_job_settles_only_when_every_destination_delivered() -> None:
    d = make_dispatcher()
    job = make_header("j1", ("pacs", "archive"), size=300)
    d.add_job(job)
    d.worker_ready(W1, 4, now=0.0)
    assert sorted(sent(d.dispatch(0.0))) == [("j1", "archive"), ("j1", "pacs")]

    assert answer(d, W1, ok(job, "pacs"), now=1.0) == []
    assert "j1" in d.jobs
    assert answer(d, W1, ok(job, "archive"), now=1.0) == [Settled(job)]

    assert d.jobs == {}
    assert d.queued_bytes == 0
    assert d.in_flight == {"pacs": 0, "archive": 0}


def test_add_job_is_idempotent_by_job_id() -> None:
    d = make_dispatcher()
    job = make_header("j1", ("pacs",), size=300)
    d.add_job(job)

    assert d.add_job(job) == []
    assert d.add_job(make_header("j1", ("archive",), size=999)) == []

    assert len(d.queues["pacs"]) == 1
    assert len(d.queues["archive"]) == 0
    assert d.queued_bytes == 300
    assert len(d.jobs) == 1


def test_recovered_delivered_destinations_are_not_queued() -> None:
    d = make_dispatcher()
    job = make_header("j1", ("pacs", "archive"))

    assert d.add_job(job, delivered={"pacs"}) == []

    assert len(d.queues["pacs"]) == 0
    assert [x.destination for x in d.queues["archive"]] == ["archive"]
    d.worker_ready(W1, 1, now=0.0)
    assert sent(d.dispatch(0.0)) == [("j1", "archive")]
    assert answer(d, W1, ok(job, "archive"), now=0.0) == [Settled(job)]


def test_recovered_job_delivered_everywhere_settles_at_once() -> None:
    d = make_dispatcher()
    job = make_header("j1", ("pacs", "archive"), size=50)

    assert d.add_job(job, delivered=["pacs", "archive"]) == [Settled(job)]

    assert d.jobs == {}
    assert d.queued_bytes == 0
    assert not d.queues["pacs"] and not d.queues["archive"]


def test_unknown_destination_is_a_dead_letter() -> None:
    d = make_dispatcher()
    job = make_header("j1", ("ghost", "pacs"))

    outcomes = d.add_job(job)

    assert len(outcomes) == 1
    dead = outcomes[0]
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "unknown_destination"
    assert dead.delivery == Delivery(job, "ghost", 1)
    assert "ghost" in dead.detail
    assert d.jobs["j1"].pending == {"pacs"}  # still waits for pacs
    assert [x.destination for x in d.queues["pacs"]] == ["pacs"]


def test_only_unknown_destinations_dead_letter_then_settle() -> None:
    d = make_dispatcher()
    job = make_header("j1", ("ghost",), size=10)

    outcomes = d.add_job(job)

    assert [type(o) for o in outcomes] == [DeadLetter, Settled]
    assert outcomes[1] == Settled(job)
    assert d.jobs == {}
    assert d.queued_bytes == 0


# --- refusal -----------------------------------------------------------------------------------


def test_refusal_when_max_jobs_reached() -> None:
    d = make_dispatcher(max_jobs=2)
    d.add_job(make_header("j1"))
    assert d.refusal(make_header("j2")) is None
    d.add_job(make_header("j2"))

    reason = d.refusal(make_header("j3"))

    assert reason is not None and reason.startswith("queue full")


def test_refusal_when_max_bytes_would_be_exceeded() -> None:
    d = make_dispatcher(max_bytes=1000)
    d.add_job(make_header("j1", size=600))

    assert d.refusal(make_header("j2", size=400)) is None  # exactly at the bound
    reason = d.refusal(make_header("j2", size=401))
    assert reason is not None and reason.startswith("queue full")


def test_a_settled_job_frees_its_share_of_the_bounds() -> None:
    d = make_dispatcher(max_jobs=1, max_bytes=1000)
    job = make_header("j1", size=1000)
    d.add_job(job)
    assert d.refusal(make_header("j2", size=1)) is not None
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(0.0)

    answer(d, W1, ok(job, "pacs"), now=0.0)

    assert d.refusal(make_header("j2", size=1000)) is None


# --- credits, max_parallel, round robin --------------------------------------------------------


def test_nothing_is_dispatched_without_a_worker() -> None:
    d = make_dispatcher()
    d.add_job(make_header("j1"))

    assert d.dispatch(0.0) == []
    assert len(d.queues["pacs"]) == 1


def test_credits_limit_dispatch() -> None:
    d = make_dispatcher({"pacs": 10})
    jobs = [make_header(f"j{i}") for i in range(5)]
    for job in jobs:
        d.add_job(job)
    d.worker_ready(W1, 2, now=0.0)

    assert sent(d.dispatch(0.0)) == [("j0", "pacs"), ("j1", "pacs")]
    assert d.dispatch(0.0) == []
    assert d.workers[W1].credits == 0

    answer(d, W1, ok(jobs[0], "pacs"), now=0.0)  # a Result returns one credit
    assert d.workers[W1].credits == 1
    assert sent(d.dispatch(0.0)) == [("j2", "pacs")]


def test_deliveries_are_spread_over_workers_with_credit() -> None:
    d = make_dispatcher({"pacs": 10})
    for i in range(3):
        d.add_job(make_header(f"j{i}"))
    d.worker_ready(W1, 1, now=0.0)
    d.worker_ready(W2, 1, now=0.0)

    sends = d.dispatch(0.0)

    assert sorted(identity for identity, _ in sends) == [W1, W2]
    assert len(d.queues["pacs"]) == 1
    assert set(d.workers[W1].leases) | set(d.workers[W2].leases) == {
        ("j0", "pacs"), ("j1", "pacs")
    }


def test_max_parallel_per_destination_is_respected() -> None:
    d = make_dispatcher({"pacs": 2})
    jobs = [make_header(f"j{i}") for i in range(6)]
    for job in jobs:
        d.add_job(job)
    d.worker_ready(W1, 10, now=0.0)

    # Six jobs for two associations: two runs of three, one per association.
    (_, first), (_, second) = d.dispatch(0.0)
    assert [j.job_id for j in first.jobs] == ["j0", "j1", "j2"]
    assert [j.job_id for j in second.jobs] == ["j3", "j4", "j5"]
    assert d.in_flight["pacs"] == 2
    assert d.dispatch(0.0) == []
    assert d.workers[W1].credits == 8


def test_a_short_queue_goes_one_delivery_per_association() -> None:
    d = make_dispatcher({"pacs": 2})
    jobs = [make_header(f"j{i}") for i in range(3)]
    for job in jobs[:2]:
        d.add_job(job)
    d.worker_ready(W1, 10, now=0.0)
    assert sent(d.dispatch(0.0)) == [("j0", "pacs"), ("j1", "pacs")]
    d.add_job(jobs[2])
    assert d.dispatch(0.0) == []  # both associations busy
    answer(d, W1, ok(jobs[0], "pacs"), now=0.0)
    assert sent(d.dispatch(0.0)) == [("j2", "pacs")]
    assert d.in_flight["pacs"] == 2


def test_a_busy_destination_does_not_block_another() -> None:
    d = make_dispatcher({"pacs": 1, "archive": 4})
    for i in range(3):
        d.add_job(make_header(f"p{i}", ("pacs",)))
        d.add_job(make_header(f"a{i}", ("archive",)))
    d.worker_ready(W1, 10, now=0.0)

    sends = d.dispatch(0.0)

    # pacs takes one association: its three jobs go as one run over it.
    assert [[j.job_id for j in dl.jobs] for _, dl in sends] == [
        ["p0", "p1", "p2"], ["a0"], ["a1"], ["a2"]]
    assert d.in_flight == {"pacs": 1, "archive": 3}


def test_dispatch_alternates_between_destinations() -> None:
    d = make_dispatcher({"pacs": 10, "archive": 10})
    for i in range(3):
        d.add_job(make_header(f"p{i}", ("pacs",)))
        d.add_job(make_header(f"a{i}", ("archive",)))
    d.worker_ready(W1, 4, now=0.0)

    destinations = [dest for _, dest in sent(d.dispatch(0.0))]

    assert sorted(destinations) == ["archive", "archive", "pacs", "pacs"]
    assert destinations[0] != destinations[1]
    assert destinations[2] != destinations[3]


def test_round_robin_holds_when_credits_come_back_one_at_a_time() -> None:
    d = make_dispatcher({"pacs": 4, "archive": 4})
    for i in range(4):
        d.add_job(make_header(f"p{i}", ("pacs",)))
        d.add_job(make_header(f"a{i}", ("archive",)))
    d.worker_ready(W1, 1, now=0.0)

    served = []
    for _ in range(4):
        ((_, delivery),) = d.dispatch(0.0)
        served.append(delivery.destination)
        answer(d, W1, ok(delivery.job, delivery.destination), now=0.0)

    assert sorted(served) == ["archive", "archive", "pacs", "pacs"]


# --- retries and dead letters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (30, 8.0)]
)
@pytest.mark.parametrize("r", [0.0, 0.25, 0.999])
def test_backoff_is_capped_exponential_with_jitter(attempt: int, base: float, r: float) -> None:
    delay = backoff(RETRY, attempt, lambda: r)

    assert delay == pytest.approx(base * (0.5 + r / 2))
    assert 0.5 * base <= delay <= base


def test_transient_failure_is_retried_after_backoff() -> None:
    d = make_dispatcher({"pacs": 4}, rand=lambda: 0.5)
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=100.0)
    d.dispatch(100.0)

    outcomes = answer(d, W1, failed(job, "pacs", "dimse_timeout"), now=100.0)

    assert len(outcomes) == 1
    retry = outcomes[0]
    assert isinstance(retry, Retry)
    assert retry.delivery == Delivery(job, "pacs", 2)
    assert retry.reason == "dimse_timeout"
    assert retry.delay == pytest.approx(0.75)  # initial 1.0, jitter 75%
    assert 0.5 <= retry.delay <= 1.0
    assert d.in_flight["pacs"] == 0
    assert d.depth("pacs") == 1
    assert d.next_due(now=0.0) == pytest.approx(100.75)
    assert "j1" in d.jobs

    assert d.dispatch(100.74) == []  # not before the delay elapsed
    ((identity, delivery),) = d.dispatch(100.75)
    assert identity == W1
    assert delivery == Delivery(job, "pacs", 2)
    assert d.next_due(now=0.0) is None


@pytest.mark.parametrize("attempt", [1, 2, 3, 4])
def test_retry_delay_grows_with_the_failed_attempt(attempt: int) -> None:
    retry = RetryConfig(max_attempts=10, initial_delay=2.0, max_delay=10.0)
    d = make_dispatcher({"pacs": 4}, retry=retry, rand=lambda: 1.0)
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    now = 0.0
    d.dispatch(now)
    for _ in range(attempt - 1):
        (r,) = answer(d, W1, failed(job, "pacs"), now=now)
        assert isinstance(r, Retry)
        now += r.delay
        d.dispatch(now)

    (outcome,) = answer(d, W1, failed(job, "pacs"), now=now)

    assert isinstance(outcome, Retry)
    assert outcome.delivery.attempt == attempt + 1
    assert outcome.delay == pytest.approx(min(10.0, 2.0 * 2 ** (attempt - 1)))


def test_permanent_failure_is_a_dead_letter_then_settles() -> None:
    d = make_dispatcher()
    job = make_header("j1", ("pacs",), size=10)
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(0.0)

    outcomes = answer(d, W1, failed(job, "pacs", "rejected", transient=False, detail="A900"),
                        now=0.0)

    assert outcomes == [DeadLetter(Delivery(job, "pacs", 1), "rejected", "A900"), Settled(job)]
    assert d.jobs == {}
    assert d.queued_bytes == 0
    assert d.depth("pacs") == 0


def test_dead_letter_settles_only_with_the_last_destination() -> None:
    d = make_dispatcher()
    job = make_header("j1", ("pacs", "archive"))
    d.add_job(job)
    d.worker_ready(W1, 2, now=0.0)
    d.dispatch(0.0)

    first = answer(d, W1, failed(job, "pacs", "rejected", transient=False), now=0.0)
    assert [type(o) for o in first] == [DeadLetter]

    assert answer(d, W1, ok(job, "archive"), now=0.0) == [Settled(job)]


def test_exhausted_attempts_are_a_dead_letter_with_suffix() -> None:
    retry = RetryConfig(max_attempts=2, initial_delay=1.0, max_delay=8.0)
    d = make_dispatcher({"pacs": 4}, retry=retry)
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(0.0)
    (retry_outcome,) = answer(d, W1, failed(job, "pacs", "dimse_timeout"), now=0.0)
    assert isinstance(retry_outcome, Retry)
    ((_, second),) = d.dispatch(retry_outcome.delay)
    assert second.attempt == 2

    outcomes = answer(d, W1, failed(job, "pacs", "dimse_timeout", detail="timed out"), now=5.0)

    assert outcomes == [
        DeadLetter(Delivery(job, "pacs", 2), "dimse_timeout_retries_exhausted", "timed out"),
        Settled(job),
    ]
    assert d.next_due(now=0.0) is None


def test_single_attempt_policy_gives_up_on_the_first_transient_failure() -> None:
    retry = RetryConfig(max_attempts=1, initial_delay=1.0, max_delay=8.0)
    d = make_dispatcher({"pacs": 4}, retry=retry)
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(0.0)

    outcomes = answer(d, W1, failed(job, "pacs", "status"), now=0.0)

    assert [type(o) for o in outcomes] == [DeadLetter, Settled]
    assert isinstance(outcomes[0], DeadLetter)
    assert outcomes[0].reason == "status_retries_exhausted"


def test_withdrawn_settles_without_a_dead_letter() -> None:
    d = make_dispatcher()
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(0.0)

    outcomes = answer(d, W1, failed(job, "pacs", "withdrawn", transient=False), now=0.0)

    assert outcomes == [Settled(job)]
    assert d.in_flight["pacs"] == 0


def test_result_from_an_unknown_worker_is_ignored() -> None:
    d = make_dispatcher()
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(0.0)

    assert answer(d, b"stranger", ok(job, "pacs"), now=0.0) == []

    assert "j1" in d.jobs
    assert d.in_flight["pacs"] == 1
    assert b"stranger" not in d.workers
    assert ("j1", "pacs") in d.workers[W1].leases


def test_result_for_a_delivery_the_worker_does_not_hold_is_ignored() -> None:
    d = make_dispatcher()
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.worker_ready(W2, 0, now=0.0)
    d.dispatch(0.0)  # leased to W1

    assert answer(d, W2, ok(job, "pacs"), now=0.0) == []

    assert "j1" in d.jobs
    assert d.in_flight["pacs"] == 1


# --- worker leases -----------------------------------------------------------------------------


def test_worker_gone_requeues_its_leases_at_the_front_with_the_same_attempt() -> None:
    d = make_dispatcher({"pacs": 4})
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(0.0)
    (retry_outcome,) = answer(d, W1, failed(job, "pacs"), now=0.0)
    assert isinstance(retry_outcome, Retry)
    ((_, leased),) = d.dispatch(10.0)
    assert leased.attempt == 2
    later = make_header("j2")
    d.add_job(later)

    assert d.worker_gone(W1) == 1

    assert W1 not in d.workers
    assert d.in_flight["pacs"] == 0
    assert list(d.queues["pacs"]) == [Delivery(job, "pacs", 2), Delivery(later, "pacs", 1)]
    d.worker_ready(W2, 1, now=11.0)
    ((identity, again),) = d.dispatch(11.0)
    assert identity == W2
    assert again == Delivery(job, "pacs", 2)


def test_worker_gone_for_an_unknown_worker_is_harmless() -> None:
    d = make_dispatcher()

    assert d.worker_gone(b"nobody") == 0


def test_result_after_worker_gone_is_ignored() -> None:
    d = make_dispatcher()
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(0.0)
    d.worker_gone(W1)

    assert answer(d, W1, ok(job, "pacs"), now=1.0) == []
    assert "j1" in d.jobs
    assert len(d.queues["pacs"]) == 1


def test_worker_gone_keeps_the_order_of_requeued_deliveries() -> None:
    d = make_dispatcher({"pacs": 2})
    jobs = [make_header(f"j{i}") for i in range(3)]
    for job in jobs:
        d.add_job(job)
    d.worker_ready(W1, 2, now=0.0)
    assert sent(d.dispatch(0.0)) == [("j0", "pacs"), ("j2", "pacs")]  # a run j0+j1, then j2

    d.worker_gone(W1)

    assert [j.job_id for x in d.queues["pacs"] for j in x.jobs] == ["j0", "j1", "j2"]


def test_expired_workers_after_the_lease() -> None:
    d = make_dispatcher()
    d.worker_ready(W1, 1, now=0.0)
    d.worker_ready(W2, 1, now=3.0)

    assert d.expired_workers(WORKER_LEASE_SECONDS) == []
    assert d.expired_workers(WORKER_LEASE_SECONDS + 0.01) == [W1]
    assert sorted(d.expired_workers(3.0 + WORKER_LEASE_SECONDS + 0.01)) == [W1, W2]


def test_heartbeat_and_results_extend_the_lease() -> None:
    d = make_dispatcher()
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.worker_ready(W2, 1, now=0.0)
    d.dispatch(0.0)
    holder = next(w for w in (W1, W2) if d.workers[w].leases)
    other = W2 if holder == W1 else W1

    assert d.worker_seen(other, now=5.0) is True
    answer(d, holder, ok(job, "pacs"), now=5.0)

    assert d.expired_workers(5.0 + WORKER_LEASE_SECONDS) == []
    assert d.worker_seen(b"stranger", now=5.0) is False
    assert b"stranger" not in d.workers


def test_worker_ready_again_updates_credits() -> None:
    d = make_dispatcher()
    d.worker_ready(W1, 1, now=0.0)
    d.worker_ready(W1, 3, now=2.0)

    assert d.workers[W1].credits == 3
    assert d.workers[W1].last_seen == 2.0


# --- a destination that is down ----------------------------------------------------------------


def test_destination_failure_pauses_the_queue_without_spending_attempts() -> None:
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    jobs = [make_header(f"j{i}", ("pacs",)) for i in range(3)]
    for job in jobs:
        d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    ((_, first),) = d.dispatch(now=0.0)

    (retry,) = answer(d, W1, failed(first.job, "pacs", "connection"), now=0.0)

    assert isinstance(retry, Retry) and retry.delivery.attempt == 1  # no attempt spent
    assert d.is_paused("pacs", now=0.5)
    assert d.dispatch(now=0.5) == []  # the whole queue waits, not just this delivery
    assert d.next_due(now=0.5) == pytest.approx(1.0)
    assert sent(d.dispatch(now=1.0)) == [("j0", "pacs")]  # it stays at the front


def test_pause_grows_while_the_destination_stays_down_and_resets_on_success() -> None:
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    job = make_header("j0", ("pacs",))
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    now, pauses = 0.0, []
    for _ in range(4):
        d.dispatch(now=now)
        (retry,) = answer(d, W1, failed(job, "pacs", "connection"), now=now)
        pauses.append(retry.delay)
        now += retry.delay
    assert pauses == [1.0, 2.0, 4.0, 8.0]
    d.dispatch(now=now)
    assert answer(d, W1, ok(job, "pacs"), now=now) == [Settled(job)]
    assert not d.is_paused("pacs", now=now)


@pytest.mark.parametrize("reason", ["unavailable", "auth", "redirect"])
def test_a_dicomweb_service_failure_pauses_and_keeps_retry_after(reason: str) -> None:
    """A DICOMweb service that answers for itself (down, credentials, redirect) holds the
    queue like a PACS that is down; its Retry-After is the least wait, the backoff the most."""
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    job = make_header("j0", ("pacs",))
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(now=0.0)
    down = Result(job.job_id, "pacs", False, reason, True, "HTTP 503", retry_after=5.0)
    (retry,) = answer(d, W1, down, now=0.0)
    assert isinstance(retry, Retry) and retry.delivery.attempt == 1
    assert retry.delay == pytest.approx(5.0)  # not the 1 s backoff
    assert d.dispatch(now=4.9) == []
    assert sent(d.dispatch(now=5.0)) == [("j0", "pacs")]
    (retry,) = answer(d, W1, failed(job, "pacs", reason), now=5.0)
    assert retry.delay == pytest.approx(2.0) and retry.delivery.attempt == 1


def test_a_paused_destination_does_not_hold_up_another() -> None:
    d = make_dispatcher({"pacs": 4, "archive": 4})
    a, b = make_header("a", ("pacs",)), make_header("b", ("archive",))
    d.add_job(a)
    d.worker_ready(W1, 2, now=0.0)
    d.dispatch(now=0.0)
    answer(d, W1, failed(a, "pacs", "rejected"), now=0.0)
    d.add_job(b)
    assert sent(d.dispatch(now=0.1)) == [("b", "archive")]


def test_a_destination_is_down_from_its_pause_until_it_answers_again() -> None:
    """Its pause's end is no news: the probe that follows may hang for its whole timeout,
    and /metrics read such a destination as up most of the time (destination_up 1 in 103
    of 118 samples while it answered nothing). Up again once it takes an instance or
    answers about one; a failure of the router's own (a morph) says nothing."""
    d = make_dispatcher({"pacs": 1})
    d.worker_ready(W1, 8, now=0.0)

    def one(name: str, now: float, result: Callable[[JobHeader], Result]) -> None:
        job = make_header(name, ("pacs",))
        d.add_job(job)
        assert sent(d.dispatch(now=now)) == [(name, "pacs")]
        answer(d, W1, result(job), now=now)

    one("j0", 0.0, lambda j: failed(j, "pacs", "connection"))
    assert not d.is_up("pacs") and d.is_paused("pacs", 0.1)
    assert not d.is_paused("pacs", 100.0) and not d.is_up("pacs")  # probing: still down
    assert sent(d.dispatch(now=100.0)) == [("j0", "pacs")]
    answer(d, W1, failed(make_header("j0", ("pacs",)), "pacs", "morph", transient=False),
           now=100.0)
    assert not d.is_up("pacs")  # the router's own failure: no news of the destination
    one("j1", 100.0, lambda j: failed(j, "pacs", "status", transient=False))
    assert d.is_up("pacs")  # it answered about an instance
    one("j2", 101.0, lambda j: failed(j, "pacs", "aborted"))
    assert not d.is_up("pacs")
    assert sent(d.dispatch(now=300.0)) == [("j2", "pacs")]
    answer(d, W1, ok(make_header("j2", ("pacs",)), "pacs"), now=300.0)
    assert d.is_up("pacs")


def test_a_down_destination_is_probed_with_one_delivery_until_it_takes_one() -> None:
    """At a pause's end the whole limit went out at once (4 requests to a DICOMweb service
    that was still down, at every probe). One delivery probes it; nothing else goes while
    that one is out or after it failed too; once it is taken, the limit is used again."""
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    jobs = [make_header(f"j{i}", ("pacs",)) for i in range(4)]
    for job in jobs:
        d.add_job(job)
    d.worker_ready(W1, 4, now=0.0)
    assert len(d.dispatch(now=0.0)) == 4  # up: one delivery per association
    for job in jobs:
        answer(d, W1, failed(job, "pacs", "connection"), now=0.0)

    ((_, probe),) = d.dispatch(now=1.0)  # the pause ended: one probe
    assert probe.jobs == (probe.job,)  # of one job
    assert d.dispatch(now=1.0) == []  # nothing more while it is out
    (retry,) = answer(d, W1, failed(probe.job, "pacs", "connection"), now=1.0)
    now = 1.0 + retry.delay
    ((_, again),) = d.dispatch(now=now)  # still down: one probe again
    assert d.dispatch(now=now) == []
    answer(d, W1, ok(again.job, "pacs"), now=now)
    assert len(d.dispatch(now=now)) == 3  # it took one: the others go at once


def test_probes_of_down_destinations_leave_half_the_threads_to_those_up() -> None:
    """Behind a dead WAN link each probe hangs for its connect timeout: 40 down destinations
    held every delivery thread, and a healthy destination's queue waited minutes. Probes
    hold at most half the threads; the rest go on delivering to destinations that are up."""
    far = [f"far{i}" for i in range(6)]
    d = make_dispatcher({name: 1 for name in [*far, "near"]})
    d.worker_ready(W1, 4, now=0.0)
    for name in far:  # each fails once: down, its queue paused
        job = make_header(f"{name}-0", (name,))
        d.add_job(job)
        for _ in range(6):
            if sent(d.dispatch(now=0.0)) == [(job.job_id, name)]:
                break
        answer(d, W1, failed(job, name, "connection"), now=0.0)
    assert not any(d.is_up(name) for name in far)
    near = make_header("near-0", ("near",))
    d.add_job(near)

    sends = d.dispatch(now=100.0)  # every pause is over: six probes due, and near's job

    assert sorted(x.destination for _, x in sends) == ["far0", "far1", "near"]  # 2 of 4
    assert d.dispatch(now=100.0) == []  # one thread free, and it is not for a probe
    answer(d, W1, ok(near, "near"), now=100.0)
    d.add_job(near2 := make_header("near-1", ("near",)))
    assert sent(d.dispatch(now=100.0)) == [(near2.job_id, "near")]
    answer(d, W1, failed(make_header("far0-0", ("far0",)), "far0", "connection"), now=100.0)
    assert [x.destination for _, x in d.dispatch(now=100.0)] == ["far2"]  # its slot is free


def test_an_outage_is_announced_once_and_its_end_is_reported() -> None:
    """Each failed probe was logged (announce), so 300 destinations behind a dead link wrote
    a line each per probe for hours. Announced: going down, and failing another way; the
    end of the outage is reported with how long it lasted and how many probes failed."""
    d = make_dispatcher({"pacs": 1}, rand=lambda: 1.0)
    d.worker_ready(W1, 1, now=0.0)
    job = make_header("j0", ("pacs",))
    d.add_job(job)
    announced = []
    now = 0.0
    for reason in ["connection", "connection", "connection", "rejected", "rejected"]:
        assert sent(d.dispatch(now=now)) == [("j0", "pacs")]
        (retry,) = answer(d, W1, failed(job, "pacs", reason), now=now)
        announced.append(retry.announce)
        now += retry.delay
    assert announced == [True, False, False, True, False]
    assert d.recoveries == []
    assert sent(d.dispatch(now=now)) == [("j0", "pacs")]
    answer(d, W1, ok(job, "pacs"), now=now)
    assert d.recoveries == [("pacs", now, 5)]  # down since 0.0, five failures
    job2 = make_header("j1", ("pacs",))
    d.add_job(job2)
    assert sent(d.dispatch(now=now)) == [("j1", "pacs")]
    (retry,) = answer(d, W1, failed(job2, "pacs", "connection"), now=now)
    assert retry.announce  # a new outage


@pytest.mark.parametrize("transient", [True, False])
def test_a_failure_status_during_a_pause_ends_the_pause(transient: bool) -> None:
    """The destination answered about an instance (a delivery still out when another one
    failed to connect, or a probe): it is up. It was marked up but its pause stayed, so the
    rest of its queue waited for the old pause to end."""
    d = make_dispatcher({"pacs": 4}, rand=lambda: 1.0)
    jobs = [make_header(f"j{i}", ("pacs",)) for i in range(3)]
    for job in jobs:
        d.add_job(job)
    d.worker_ready(W1, 4, now=0.0)
    assert len(d.dispatch(now=0.0)) == 3
    answer(d, W1, failed(jobs[0], "pacs", "connection"), now=0.0)
    assert d.is_paused("pacs", 0.1) and not d.is_up("pacs")
    answer(d, W1, failed(jobs[1], "pacs", "status", transient=transient), now=0.1)
    assert d.is_up("pacs") and not d.is_paused("pacs", 0.1)
    assert sent(d.dispatch(now=0.1)) == [("j0", "pacs")]  # not at the pause's end (1 s)


def test_a_permanent_rejection_is_still_a_dead_letter() -> None:
    d = make_dispatcher({"pacs": 4})
    job = make_header("j0", ("pacs",))
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(now=0.0)
    outcomes = answer(d, W1, failed(job, "pacs", "rejected", transient=False), now=0.0)
    assert [type(o) for o in outcomes] == [DeadLetter, Settled]


# --- which settled instances may be written over (router/core/recycling.py) --------------------


def _leased(*, exclusive: bool = True) -> tuple[Dispatcher, JobHeader]:
    """One job for "pacs", leased to W1."""
    d = make_dispatcher({"pacs": 4})
    job = make_header("j1")
    d.add_job(job, exclusive=exclusive)
    d.worker_ready(W1, 1, now=0.0)
    d.dispatch(0.0)
    return d, job


def test_a_job_leased_once_settles_reusable() -> None:
    d, job = _leased()
    (settled,) = answer(d, W1, ok(job, "pacs"), now=1.0)
    assert isinstance(settled, Settled) and settled.reusable


def test_a_retried_job_is_still_reusable() -> None:
    # A failed attempt ended before its result came back: one lease at a time.
    d, job = _leased()
    answer(d, W1, failed(job, "pacs"), now=0.0)
    d.dispatch(10.0)
    (settled,) = answer(d, W1, ok(job, "pacs"), now=10.0)
    assert isinstance(settled, Settled) and settled.reusable


def test_a_job_whose_lease_was_taken_back_is_not_reusable() -> None:
    # The worker that lost the lease may be alive and still sending the file.
    d, job = _leased()
    d.worker_gone(W1)
    d.worker_ready(W2, 1, now=1.0)
    d.dispatch(1.0)
    (settled,) = answer(d, W2, ok(job, "pacs"), now=2.0)
    assert isinstance(settled, Settled) and not settled.reusable


def test_a_recovered_job_is_not_reusable() -> None:
    # A previous broker's lease of it may still be running in a worker.
    d, job = _leased(exclusive=False)
    (settled,) = answer(d, W1, ok(job, "pacs"), now=1.0)
    assert isinstance(settled, Settled) and not settled.reusable
    (at_once,) = d.add_job(make_header("j2"), delivered=["pacs"], exclusive=False)
    assert isinstance(at_once, Settled) and not at_once.reusable


def test_a_spool_write_failure_waits_without_spending_an_attempt() -> None:
    """The worker could not write its copy (full spool): the router's disk, not the
    instance's fault. It spent attempts before, and became a dead letter the full spool could
    not take either."""
    d = make_dispatcher({"pacs": 1}, rand=lambda: 1.0)
    job = make_header("j1")
    d.add_job(job)
    d.worker_ready(W1, 1, now=0.0)
    now = 0.0
    delays = []
    for _ in range(RETRY.max_attempts + 3):
        ((_, delivery),) = d.dispatch(now)
        assert delivery.attempt == 1
        (retry,) = answer(d, W1, failed(job, "pacs", "spool_write", detail="ENOSPC"), now)
        assert isinstance(retry, Retry) and retry.reason == "spool_write"
        assert retry.delivery.attempt == 1
        delays.append(retry.delay)
        now += retry.delay
        d.worker_ready(W1, 1, now)
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]  # backs off while the spool keeps failing
    assert d.paused_until["pacs"] == 0.0  # the destination is not down
    d.dispatch(now)
    assert answer(d, W1, ok(job, "pacs"), now) == [Settled(job)]
    assert d.spool_wait.failures_in_a_row == 0


def _spool_full_for(d: Dispatcher, jobs: list[JobHeader], now: float) -> list[Retry]:
    """Send every queued job to W1 and answer each `spool_write`."""
    d.worker_ready(W1, len(jobs), now)
    sends = d.dispatch(now)
    assert len(sends) == len(jobs)
    return [r for job in jobs
            for r in answer(d, W1, failed(job, "pacs", "spool_write", detail="ENOSPC"), now)]


def test_a_full_spool_counts_one_failure_per_spell_and_releases_all_once_a_probe_gets_through(
        ) -> None:
    """Before: each delivery caught in one full-disk moment grew the back-off on its own
    (30 jobs: delays up to max_delay) and pushed itself that far away; a success reset the
    count but released none of them, so a queue sat for minutes after space came back."""
    d = make_dispatcher({"pacs": 40}, rand=lambda: 1.0)
    jobs = [make_header(f"j{i}") for i in range(30)]
    for job in jobs:
        d.add_job(job)
    retries = _spool_full_for(d, jobs, now=0.0)
    assert {r.delay for r in retries} == {RETRY.initial_delay}  # one spell, one failure
    assert [r.announce for r in retries].count(True) == 1
    assert d.spool_wait.failures_in_a_row == 1
    assert d.depth("pacs") == 30
    assert d.dispatch(0.5) == []
    # The back-off ends: one delivery probes the spool, the others still wait.
    (probe,) = d.dispatch(1.0)
    assert probe[1].job == jobs[0]
    answer(d, W1, ok(jobs[0], "pacs"), 1.0)
    sends = d.dispatch(1.0)  # the spool took it: everything else goes at once
    assert sorted(sent(sends)) == sorted((j.job_id, "pacs") for j in jobs[1:])
    assert d.spool_wait.waiting == [] and d.spool_wait.failures_in_a_row == 0


def test_a_probe_meeting_the_full_spool_again_grows_the_back_off_once() -> None:
    d = make_dispatcher({"pacs": 40}, rand=lambda: 1.0)
    jobs = [make_header(f"j{i}") for i in range(5)]
    for job in jobs:
        d.add_job(job)
    d.worker_ready(W1, 5, now=0.0)
    _spool_full_for(d, jobs, now=0.0)
    (probe,) = d.dispatch(1.0)
    (again,) = answer(d, W1, failed(probe[1].job, "pacs", "spool_write"), 1.0)
    assert isinstance(again, Retry) and again.delay == 2.0 and again.announce
    assert d.dispatch(2.9) == []
    (probe2,) = d.dispatch(3.0)
    assert probe2[1].job == probe[1].job  # the same delivery probes again


def test_a_delivery_that_wrote_its_copy_releases_what_waits_for_the_spool() -> None:
    """Any delivery that needed a copy and got it through says the spool has room again; a
    delivery that needed none says nothing about it."""
    d = make_dispatcher({"pacs": 40}, rand=lambda: 1.0)
    jobs = [make_header(f"j{i}") for i in range(3)]
    for job in jobs:
        d.add_job(job)
    _spool_full_for(d, jobs, now=0.0)
    plain, morphed = make_header("plain"), make_header("morphed")
    d.add_job(plain)
    d.add_job(morphed)
    d.worker_ready(W1, 2, now=0.1)
    assert len(d.dispatch(0.1)) == 2
    answer(d, W1, ok(plain, "pacs"), 0.2)
    assert d.dispatch(0.2) == [] and len(d.spool_wait.waiting) == 3
    answer(d, W1, Result(morphed.job_id, "pacs", True, wrote_copy=True), 0.3)
    d.worker_ready(W1, 3, now=0.3)
    assert sorted(sent(d.dispatch(0.3))) == sorted((j.job_id, "pacs") for j in jobs)


def test_an_operators_retry_releases_what_waits_for_the_spool() -> None:
    from router.broker.queue_moves import release_now

    d = make_dispatcher({"pacs": 40}, rand=lambda: 1.0)
    job = make_header("j1")
    d.add_job(job)
    _spool_full_for(d, [job], now=0.0)
    assert release_now(d, "pacs") == 1
    d.worker_ready(W1, 1, now=0.1)
    assert sent(d.dispatch(0.1)) == [("j1", "pacs")]
