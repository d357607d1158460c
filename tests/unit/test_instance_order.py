"""router/broker/instance_order.py through the Dispatcher: receptions of one SOP instance
reach each destination in the order they were received, whatever their priority and however
many associations the destination takes."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from router.broker.control import OperatorControl
from router.broker.deliveries import DeadLetter, DestinationPolicy, Settled
from router.broker.dispatch import Dispatcher
from router.core.config import RetryConfig, parse_config
from router.core.messages import Control, JobHeader, Result
from router.core.priority import LOW, URGENT
from router.core.spool import Spool

from .helpers import answer, answer_batch, make_header

W1 = b"worker-1"
W2 = b"worker-2"
RETRY = RetryConfig(max_attempts=2, initial_delay=1.0, max_delay=1.0)
SOP = "1.2.826.0.1.3680043.8.498.1"


def dispatcher(associations: int = 4) -> Dispatcher:
    policies = {name: DestinationPolicy(associations, RETRY, max_associations=associations)
                for name in ("pacs", "archive", "backup")}
    return Dispatcher(policies, max_jobs=1000, max_bytes=10**9, rand=lambda: 0.0)


def reception(job_id: str, destinations: tuple[str, ...] = ("pacs",), *, sop: str = SOP,
              priority: int = 2) -> JobHeader:
    return make_header(job_id, destinations, sop_instance_uid=sop, priority=priority)


def sent(d: Dispatcher, now: float = 0.0) -> list[str]:
    return [f"{delivery.job.job_id}>{delivery.destination}"
            for _, delivery in d.dispatch(now)]


def delivered(d: Dispatcher, worker: bytes, job: JobHeader, destination: str = "pacs",
              now: float = 0.0) -> list[object]:
    return answer(d, worker, Result(job.job_id, destination, True), now)


def test_a_later_reception_waits_while_the_earlier_one_is_in_flight() -> None:
    d = dispatcher(associations=4)
    first, second, other = reception("a1"), reception("a2"), reception("a3", sop="1.2.3.9")
    for job in (first, second, other):
        d.add_job(job)
    d.worker_ready(W1, 8, 0.0)

    # Four associations and eight credits, yet the re-send does not run beside the first.
    assert sent(d) == ["a1>pacs", "a3>pacs"]
    assert d.depth("pacs") == 1  # the waiting reception is queued work, shown as such
    delivered(d, W1, first)
    assert sent(d) == ["a2>pacs"]


def test_an_urgent_later_version_does_not_overtake_a_low_earlier_one() -> None:
    d = dispatcher(associations=1)
    d.held.add("pacs")  # paused by an operator while both arrive
    first, second = reception("b1", priority=LOW), reception("b2", priority=URGENT)
    d.add_job(first)
    d.add_job(second)
    d.worker_ready(W1, 4, 0.0)
    d.held.discard("pacs")

    assert sent(d) == ["b1>pacs"]
    delivered(d, W1, first)
    assert sent(d) == ["b2>pacs"]


def test_retries_of_the_earlier_one_keep_the_later_one_waiting_and_a_dead_letter_frees_it(
) -> None:
    d = dispatcher()
    first, second = reception("c1"), reception("c2")
    d.add_job(first)
    d.add_job(second)
    d.worker_ready(W1, 4, 0.0)
    assert sent(d) == ["c1>pacs"]
    answer(d, W1, Result("c1", "pacs", False, "dimse_timeout", True), 0.0)
    assert sent(d, 2.0) == ["c1>pacs"]  # c1's retry, after its backoff; c2 still behind it
    outcomes = answer(d, W1, Result("c1", "pacs", False, "dimse_timeout", True), 2.0)
    assert [type(o) for o in outcomes] == [DeadLetter, Settled]
    assert sent(d, 2.0) == ["c2>pacs"]


def test_each_destination_keeps_its_own_order() -> None:
    d = dispatcher()
    first, second = reception("d1", ("pacs", "archive")), reception("d2", ("archive",))
    d.add_job(first)
    d.add_job(second)
    d.worker_ready(W1, 8, 0.0)
    assert sorted(sent(d)) == ["d1>archive", "d1>pacs"]
    delivered(d, W1, first, "pacs")
    assert sent(d) == []  # d2 waits for the archive's copy of d1, not for the PACS's
    delivered(d, W1, first, "archive")
    assert sent(d) == ["d2>archive"]


def test_a_lost_worker_gives_the_earlier_one_back_and_the_later_one_still_waits() -> None:
    d = dispatcher()
    first, second = reception("e1"), reception("e2")
    d.add_job(first)
    d.add_job(second)
    d.worker_ready(W1, 4, 0.0)
    assert sent(d) == ["e1>pacs"]
    d.worker_gone(W1)
    d.worker_ready(W2, 4, 0.0)
    assert sent(d) == ["e1>pacs"]
    delivered(d, W2, first)
    assert sent(d) == ["e2>pacs"]


def test_drain_moves_both_receptions_and_keeps_their_order_at_the_target(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").create()
    d = dispatcher()
    cfg = parse_config({
        "destinations": {n: {"type": "folder", "path": f"/tmp/{n}"}
                         for n in ("pacs", "archive", "backup")},
        "rules": [{"name": "all", "forward": ["pacs"]}],
    })
    control = OperatorControl(d, spool, cfg)
    first, second = reception("f1"), reception("f2")
    for job in (first, second):
        received = spool.incoming / f"{job.job_id}.tmp"
        received.write_bytes(b"DICM")
        spool.commit(job, received)
        d.add_job(job)

    reply, _ = control.handle(Control("r", "drain", "pacs", "backup", "tester", "::1"), 0.0)

    assert reply.ok and reply.counts["moved"] == 2
    assert d.depth("pacs") == 0 and d.depth("backup") == 2
    d.worker_ready(W1, 4, 0.0)
    assert sent(d) == ["f1>backup"]
    delivered(d, W1, d.jobs["f1"].header, "backup")
    assert sent(d) == ["f2>backup"]


def test_drain_keeping_one_puts_the_later_reception_back_behind_the_earlier(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").create()
    d = dispatcher()
    control = OperatorControl(d, spool, parse_config({
        "destinations": {n: {"type": "folder", "path": f"/tmp/{n}"}
                         for n in ("pacs", "archive", "backup")},
        "rules": [{"name": "all", "forward": ["pacs"]}],
    }))
    first, second = reception("g1"), reception("g2")
    d.add_job(first)
    d.add_job(second)
    d.worker_ready(W1, 4, 0.0)
    assert sent(d) == ["g1>pacs"]  # in flight: a drain leaves it where it is

    control.drain("pacs", "backup", keep=1)  # the fallback's probe keeps one job

    assert d.depth("pacs") == 1 and d.depth("backup") == 0
    assert sent(d) == []  # g2 was kept, and still waits for g1
    delivered(d, W1, first)
    assert sent(d) == ["g2>pacs"]


# --- any sequence of events ---------------------------------------------------------------

EVENT = st.one_of(
    st.tuples(st.just("receive"), st.integers(0, 2), st.sampled_from([0, 2, 3]),
              st.sampled_from([("pacs",), ("archive",), ("pacs", "archive")])),
    st.tuples(st.just("answer"), st.sampled_from(["ok", "retry", "busy", "lost", "refused"])),
    st.tuples(st.just("worker_gone")),
    st.tuples(st.just("wait")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENT, max_size=60))
def test_any_sequence_delivers_every_reception_once_and_in_order(events: list[tuple]) -> None:
    """Receptions of three instances, random priorities, destinations and answers: each
    destination gets every reception, each instance's in arrival order, and never two of
    one instance at once."""
    d = dispatcher(associations=3)
    now, count, worker = 0.0, 0, W1
    arrivals: dict[tuple[str, str], list[str]] = {}
    got: dict[tuple[str, str], list[str]] = {}
    d.worker_ready(worker, 6, now)
    out: list[tuple[bytes, object]] = []

    def step(kind: str) -> None:
        _, delivery = out.pop(0)
        name = delivery.destination  # type: ignore[attr-defined]
        reason, transient = {"ok": ("", True), "retry": ("dimse_timeout", True),
                             "busy": ("busy", True), "lost": ("aborted", True),
                             "refused": ("dimse_failure", False)}[kind]
        results = [Result(job.job_id, name, kind == "ok", reason, transient)
                   for job in delivery.jobs]  # type: ignore[attr-defined]
        if delivery.batch:  # type: ignore[attr-defined]
            outcomes = answer_batch(d, worker, name, results, now)
        else:
            outcomes = answer(d, worker, results[0], now)
        ends = {o.delivery.job.job_id for o in outcomes if isinstance(o, DeadLetter)}
        for job in delivery.jobs:  # type: ignore[attr-defined]
            if kind == "ok" or job.job_id in ends:  # delivered, or given up: its turn is over
                got.setdefault((name, job.sop_instance_uid), []).append(job.job_id)

    def in_flight_are_distinct() -> None:
        keys = [(d_.destination, j.sop_instance_uid)
                for w in d.workers.values() for d_ in w.leases.values() for j in d_.jobs]
        assert len(keys) == len(set(keys))

    for event in events:
        if event[0] == "receive":
            job = make_header(f"{count:04d}", event[3], sop_instance_uid=f"1.2.3.{event[1]}",
                              priority=event[2])
            count += 1
            for name in event[3]:
                arrivals.setdefault((name, job.sop_instance_uid), []).append(job.job_id)
            d.add_job(job)
        elif event[0] == "answer" and out:
            step(event[1])
        elif event[0] == "worker_gone":
            d.worker_gone(worker)
            out = []
            worker = W2 if worker == W1 else W1
            d.worker_ready(worker, 6, now)
        elif event[0] == "wait":
            now += 10.0
        out += d.dispatch(now)
        in_flight_are_distinct()

    for _ in range(10_000):  # then everything is answered Success until nothing is left
        if not d.jobs:
            break
        now += 10.0
        out += d.dispatch(now)
        in_flight_are_distinct()
        while out:
            step("ok")
            out += d.dispatch(now)
    assert not d.jobs
    assert got == arrivals
