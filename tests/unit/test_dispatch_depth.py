"""DispatchState.depth() reads counts kept as deliveries come and go (delayed_retries.py):
walking 100,000 delayed retries on every heartbeat cost the broker milliseconds each time.
The counts must match a brute-force count through every way a delivery moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.broker.control import OperatorControl
from router.broker.delayed_retries import DelayedRetries
from router.broker.deliveries import Delivery, DestinationPolicy
from router.broker.dispatch import Dispatcher
from router.broker.queue_moves import put_back, take_queued
from router.core.config import RetryConfig, parse_config
from router.core.messages import Control, Result
from router.core.spool import Spool

from .helpers import make_header

W1 = b"worker-1"
NAMES = ("pacs", "archive", "backup")
RETRY = RetryConfig(max_attempts=5, initial_delay=1.0, max_delay=8.0)


def config(names: tuple[str, ...] = NAMES) -> object:
    return parse_config({
        "destinations": {n: {"type": "folder", "path": f"/tmp/{n}"} for n in names},
        "rules": [{"name": "all", "forward": [names[-1]]}],
    })


def brute_force(d: Dispatcher, name: str) -> int:
    """What depth() summed before: every delayed retry walked."""
    delayed = sum(entry[2].size for entry in d.delayed if entry[2].destination == name)
    return (d.queues[name].jobs + delayed + d.spool_wait.jobs(name) + d.holds.depth(name)
            + d.order.parked(name))


def check(d: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {name: brute_force(d, name) for name in d.queues}
    with monkeypatch.context() as patched:  # depth() must not walk the delayed retries
        patched.setattr(DelayedRetries, "__iter__", _no_walk)
        assert {name: d.depth(name) for name in d.queues} == expected


def _no_walk(self: DelayedRetries) -> None:
    raise AssertionError("depth() walked the delayed retries")


def fail_all(d: Dispatcher, now: float) -> None:
    """Send what can go and fail each transiently: they wait out their back-off."""
    d.worker_ready(W1, 1000, now)
    for _, delivery in d.dispatch(now):
        results = [Result(job.job_id, delivery.destination, False, "dimse_timeout", True,
                          "no answer", lease=delivery.lease) for job in delivery.jobs]
        d.batch_result(W1, delivery.destination, results, now, delivery.lease)


def test_depth_follows_delay_promotion_cancel_pause_and_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool").create()
    policies = {n: DestinationPolicy(1000, RETRY, max_associations=1000) for n in NAMES}
    d = Dispatcher(policies, 10_000, 10**12, rand=lambda: 0.0)
    control = OperatorControl(d, spool, config())  # type: ignore[arg-type]

    def act(action: str, name: str) -> None:
        reply, _ = control.handle(Control("r", action, name, "", "tester", "127.0.0.1"), 0.0)
        assert reply.ok, reply.detail

    for i in range(60):
        d.add_job(make_header(f"j{i:03d}", NAMES, sop_instance_uid=f"1.2.{i}"))
    check(d, monkeypatch)

    fail_all(d, 0.0)  # delay: every delivery waits out its back-off
    assert len(d.delayed) > 0 and d.depth("pacs") == 60
    check(d, monkeypatch)

    d.dispatch(0.25)  # not due yet: nothing moves
    check(d, monkeypatch)
    fail_all(d, 1.0)  # promotion into the queues, sent, failed again: delayed again
    check(d, monkeypatch)

    act("pause", "archive")  # a pause holds the queue; the count stays
    fail_all(d, 3.0)  # pacs and backup promoted and delayed again, archive's promoted only
    check(d, monkeypatch)
    act("retry", "backup")  # its delayed retries released into its queue at once
    assert not any(entry[2].destination == "backup" for entry in d.delayed)
    check(d, monkeypatch)

    jobs = take_queued(d, "pacs")  # cancel: a drain takes everything queued or delayed
    assert len(jobs) == 60 and d.depth("pacs") == 0
    check(d, monkeypatch)
    put_back(d, "pacs", jobs)
    fail_all(d, 10.0)
    check(d, monkeypatch)

    d.jobs.pop("j000")  # a job settled elsewhere: its delayed entry is dropped when due
    check(d, monkeypatch)
    fail_all(d, 100.0)
    check(d, monkeypatch)

    # A reload removes pacs: what waited for it (delayed too) becomes dead letters.
    control.reconfigure(config(("archive", "backup")))  # type: ignore[arg-type]
    assert d.depth("pacs") == 0
    check(d, monkeypatch)


def test_a_batch_counts_each_of_its_jobs() -> None:
    delayed = DelayedRetries()
    jobs = tuple(make_header(f"b{i}") for i in range(3))
    delayed.push(5.0, Delivery(jobs[0], "pacs", 2, jobs))
    delayed.push(1.0, Delivery(jobs[0], "archive", 2))
    assert (delayed.jobs("pacs"), delayed.jobs("archive")) == (3, 1)
    assert [d.destination for d in delayed.pop_due(1.0)] == ["archive"]
    assert (delayed.jobs("pacs"), delayed.jobs("archive"), len(delayed)) == (3, 0, 1)
    assert [d.size for d in delayed.take("pacs")] == [3]
    assert (delayed.jobs("pacs"), len(delayed)) == (0, 0)
