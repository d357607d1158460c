"""router/broker/control.py and queue_moves.py: pause, resume, retry, drain-to and fallback,
without sockets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.broker.completion import CompletionPolicy, GroupHolds
from router.broker.control import OperatorControl
from router.broker.deliveries import DeadLetter, DestinationPolicy, Settled
from router.broker.dispatch import Dispatcher
from router.core.config import RetryConfig, parse_config
from router.core.messages import Control, JobHeader, Result
from router.core.spool import Spool

from .helpers import answer, answer_batch, make_header

W1 = b"worker-1"
RETRY = RetryConfig(max_attempts=3, initial_delay=1.0, max_delay=8.0)


def config(fallback: dict[str, list[str]] | None = None, after: float = 10.0) -> object:
    names = ("pacs", "archive", "backup")
    return parse_config({
        "destinations": {n: {"type": "folder", "path": f"/tmp/{n}",
                             "fallback": (fallback or {}).get(n, []),
                             "fallback_after": after} for n in names},
        "rules": [{"name": "all", "forward": ["pacs"]}],
    })


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").create()


def setup(spool: Spool, **kwargs: object) -> tuple[Dispatcher, OperatorControl]:
    cfg = config(**kwargs)  # type: ignore[arg-type]
    policies = {n: DestinationPolicy(4, RETRY, max_associations=1)
                for n in ("pacs", "archive", "backup")}
    dispatcher = Dispatcher(policies, 1000, 10**9, rand=lambda: 0.0)
    return dispatcher, OperatorControl(dispatcher, spool, cfg)  # type: ignore[arg-type]


def commit(spool: Spool, dispatcher: Dispatcher, job: JobHeader) -> None:
    received = spool.incoming / f"{job.job_id}.tmp"
    received.write_bytes(b"DICM")
    spool.commit(job, received)
    dispatcher.add_job(job)


def act(control: OperatorControl, action: str, name: str, target: str = "") -> dict[str, int]:
    reply, _ = control.handle(Control("r1", action, name, target, "tester", "127.0.0.1"), 0.0)
    assert reply.ok, reply.detail
    return reply.counts


def test_pause_holds_the_queue_and_survives_a_new_broker(spool: Spool) -> None:
    dispatcher, control = setup(spool)
    dispatcher.worker_ready(W1, 4, 0.0)
    commit(spool, dispatcher, make_header("aa01"))
    assert act(control, "pause", "pacs")["queued"] == 1
    assert dispatcher.dispatch(1.0) == []
    again, _ = setup(spool)  # a restarted broker reads the paused set from the spool
    assert again.held == {"pacs"}
    act(control, "resume", "pacs")
    assert [d.destination for _, d in dispatcher.dispatch(1.0)] == ["pacs"]
    assert json.loads(control.state_path.read_text()) == {"paused": []}


def test_retry_ends_the_backoff_now(spool: Spool) -> None:
    dispatcher, control = setup(spool)
    dispatcher.worker_ready(W1, 4, 0.0)
    job = make_header("aa02")
    commit(spool, dispatcher, job)
    dispatcher.dispatch(0.0)
    answer(dispatcher, W1, Result(job.job_id, "pacs", False, "connection", True), 0.0)
    assert dispatcher.dispatch(0.1) == []  # backing off
    act(control, "retry", "pacs")
    assert [d.job.job_id for _, d in dispatcher.dispatch(0.1)] == ["aa02"]


def test_drain_rewrites_the_headers_so_recovery_sends_to_the_target(spool: Spool) -> None:
    dispatcher, control = setup(spool)
    jobs = [make_header(f"aa1{i}") for i in range(3)]
    both = make_header("aa20", ("pacs", "archive"))
    for job in [*jobs, both]:
        commit(spool, dispatcher, job)
    counts = act(control, "drain", "pacs", "backup")
    assert counts["moved"] == 4
    recovered = {j.header.job_id: j.header.destinations for j in spool.recover()}
    assert recovered == {"aa10": ("backup",), "aa11": ("backup",), "aa12": ("backup",),
                         "aa20": ("backup", "archive")}
    assert dispatcher.depth("pacs") == 0 and dispatcher.depth("backup") == 4


def test_drain_into_a_destination_the_job_already_has_settles_it(spool: Spool) -> None:
    dispatcher, control = setup(spool)
    job = make_header("aa30", ("pacs", "archive"))
    commit(spool, dispatcher, job)
    dispatcher.worker_ready(W1, 4, 0.0)
    for _, delivery in dispatcher.dispatch(0.0):
        if delivery.destination == "archive":
            answer(dispatcher, W1, Result(job.job_id, "archive", True), 0.0)
    # pacs is in flight: nothing to move; put it back by a lost worker, then drain.
    dispatcher.worker_gone(W1)
    reply, outcomes = control.handle(Control("r", "drain", "pacs", "archive"), 0.0)
    assert reply.ok and reply.counts["moved"] == 1
    assert [type(o) for o in outcomes] == [Settled]  # archive has it: the job is done
    assert "aa30" not in dispatcher.jobs


@pytest.mark.parametrize(("action", "target", "problem"), [
    ("pause", "", "no destination 'nope'"),
    ("drain", "nope", "not a configured destination"),
    ("drain", "pacs", "into itself"),
    ("explode", "", "unknown action"),
])
def test_bad_requests_are_refused_with_a_reason(spool: Spool, action: str, target: str,
                                                problem: str) -> None:
    _, control = setup(spool)
    name = "nope" if action == "pause" else "pacs"
    reply, outcomes = control.handle(Control("r", action, name, target), 0.0)
    assert not reply.ok and problem in reply.detail and outcomes == []


def test_fallback_takes_over_after_the_delay_and_hands_back(spool: Spool) -> None:
    dispatcher, control = setup(spool, fallback={"pacs": ["archive", "backup"]}, after=10.0)
    dispatcher.worker_ready(W1, 4, 0.0)
    jobs = [make_header(f"ab0{i}") for i in range(3)]
    for job in jobs:
        commit(spool, dispatcher, job)
    for _, d in dispatcher.dispatch(0.0):
        answer(dispatcher, W1, Result(d.job.job_id, "pacs", False, "connection", True), 0.0)
    dispatcher.held.add("archive")  # an operator paused the first fallback: the next is used
    control.tick(1.0)
    assert dispatcher.depth("backup") == 0  # not yet: unavailable for 0s
    control.tick(12.0)
    assert dispatcher.depth("backup") == 2 and dispatcher.depth("pacs") == 1  # the probe
    assert control.summary("pacs", 12.0)["fallback_to"] == "backup"
    probe = next(iter(dispatcher.queues["pacs"]))
    for _, d in dispatcher.dispatch(100.0):
        if d.destination == "pacs":
            answer(dispatcher, W1, Result(probe.job.job_id, "pacs", True), 100.0)
    control.tick(101.0)
    assert "fallback_to" not in control.summary("pacs", 101.0)
    commit(spool, dispatcher, make_header("ab10"))
    control.tick(102.0)
    assert dispatcher.depth("pacs") == 1  # new work goes to pacs again


def test_a_fallbacks_probe_keeps_its_retry_back_off_and_attempts(spool: Spool) -> None:
    """The job a fallback leaves behind as the probe was taken out of its delayed retry on
    every heartbeat and queued again at attempt 1: a destination that took associations but
    timed out every C-STORE got it again each second, and it never became a dead letter."""
    dispatcher, control = setup(spool, fallback={"pacs": ["archive"]}, after=10.0)
    dispatcher.worker_ready(W1, 4, 0.0)
    for i in range(3):
        commit(spool, dispatcher, make_header(f"fp{i}"))
    for _, d in dispatcher.dispatch(0.0):
        answer(dispatcher, W1, Result(d.job.job_id, "pacs", False, "connection", True), 0.0)
    control.tick(1.0)
    control.tick(12.0)  # unavailable 11 s: archive takes all but the probe
    assert dispatcher.depth("archive") == 2 and dispatcher.depth("pacs") == 1
    now, attempts, letters = 100.0, [], []
    while now < 200.0 and not letters:
        for _, d in dispatcher.dispatch(now):
            if d.destination == "pacs":
                attempts.append(d.attempt)
                outcomes = answer(dispatcher, W1,
                                  Result(d.job.job_id, "pacs", False, "dimse_timeout", True), now)
                letters += [o for o in outcomes if isinstance(o, DeadLetter)]
        now += 1.0
        control.tick(now)
    assert attempts == [1, 2, 3]  # each after its back-off (RETRY: 3 attempts)
    assert [o.reason for o in letters] == ["dimse_timeout_retries_exhausted"]


def test_a_fallback_takes_held_groups_as_held_groups_and_sends_each_as_one_batch(
        spool: Spool) -> None:
    """The fallback's drain took the held groups' jobs one by one: the fallback got a
    completed series one instance at a time in arrival order, not as one batch in Instance
    Number order, and a held job kept as the probe left its hold early. The groups move
    whole, with their clocks, and the probe is a queued job."""
    t0, wall = 1_700_000_000.0, [1_700_000_000.0]
    holds = GroupHolds({"all": CompletionPolicy(30, 300, frozenset({"pacs"}))})
    policies = {n: DestinationPolicy(4, RETRY, max_associations=1)
                for n in ("pacs", "archive", "backup")}
    dispatcher = Dispatcher(policies, 1000, 10**9, rand=lambda: 0.0, holds=holds,
                            wall=lambda: wall[0], steady=lambda: wall[0])
    control = OperatorControl(dispatcher, spool,
                              config(fallback={"pacs": ["archive"]}))  # type: ignore[arg-type]
    dispatcher.worker_ready(W1, 4, 0.0)
    commit(spool, dispatcher, make_header("probe", received_at=t0))
    for job_id, number in [("c", 3), ("a", 1), ("b", 2)]:
        commit(spool, dispatcher, make_header(job_id, group="all|1.2.3", instance_number=number,
                                              received_at=t0 + 1))
    for _, d in dispatcher.dispatch(0.0):
        answer(dispatcher, W1, Result(d.job.job_id, "pacs", False, "connection", True), 0.0)
    control.tick(1.0)
    control.tick(12.0)  # unavailable 11 s: archive takes over
    assert [d.job.job_id for d in dispatcher.queues["pacs"]] == ["probe"]
    assert dispatcher.holds.depth("archive") == 3 and not dispatcher.queues["archive"]
    assert {j.header.job_id: j.header.destinations for j in spool.recover()} == {
        "probe": ("pacs",), "a": ("archive",), "b": ("archive",), "c": ("archive",)}
    wall[0] = t0 + 31  # the series is stable
    batch = [d for _, d in dispatcher.dispatch(100.0) if d.destination == "archive"]
    assert [[j.job_id for j in d.jobs] for d in batch] == [["a", "b", "c"]]
    outcomes = answer_batch(dispatcher, W1, "archive",
                            [Result(j.job_id, "archive", True) for j in batch[0].jobs], 100.0)
    assert {o.job.job_id for o in outcomes if isinstance(o, Settled)} == {"a", "b", "c"}


@pytest.mark.parametrize(("fallback", "problem"), [
    ({"pacs": ["pacs"]}, "own fallback"),
    ({"pacs": ["nowhere"]}, "unknown destination 'nowhere'"),
    ({"pacs": ["archive"], "archive": ["backup"], "backup": ["pacs"]}, "form a loop"),
])
def test_fallback_config_is_checked(fallback: dict[str, list[str]], problem: str) -> None:
    from router.core.errors import ConfigError

    with pytest.raises(ConfigError, match=problem):
        config(fallback)


def test_a_paused_destination_removed_by_a_reload_gives_its_queue_up(spool: Spool) -> None:
    """Held, its queue stayed parked with nothing said, where a restart dead-letters it as
    unknown_destination: a reload now does the same, at once, and the row says removed."""
    dispatcher, control = setup(spool)
    dispatcher.worker_ready(W1, 4, 0.0)
    for job_id in ("aa40", "aa41"):
        commit(spool, dispatcher, make_header(job_id, ("pacs", "archive")))
    act(control, "pause", "pacs")
    dispatcher.reconfigure({"archive": DestinationPolicy(4, RETRY)}, 1000, 10**9)
    without = parse_config({"destinations": {"archive": {"type": "folder", "path": "/tmp/a"}},
                            "rules": [{"name": "all", "forward": ["archive"]}]})
    outcomes = control.reconfigure(without)
    dead = [o for o in outcomes if isinstance(o, DeadLetter)]
    assert [(d.delivery.job.job_id, d.delivery.destination, d.reason) for d in dead] == [
        ("aa40", "pacs", "unknown_destination"), ("aa41", "pacs", "unknown_destination")]
    assert not any(isinstance(o, Settled) for o in outcomes)  # archive is still to come
    assert dispatcher.held == set() and dispatcher.depth("pacs") == 0
    assert json.loads(control.state_path.read_text()) == {"paused": []}
    assert control.summary("pacs", 1.0)["removed"] is True
    assert control.summary("archive", 1.0)["removed"] is False
    assert {d.destination for _, d in dispatcher.dispatch(1.0)} == {"archive"}
    # Acting on it says it is gone, not "resumed (it already was)" or "moved 0 jobs".
    for action in ("resume", "drain"):
        reply, _ = control.handle(Control("r2", action, "pacs", "archive", "tester", "::1"), 2.0)
        assert not reply.ok and "removed by a config reload" in reply.detail, reply.detail


def test_pause_and_resume_the_spool_refuses_change_nothing(spool: Spool) -> None:
    # The operator hears "not done" (a server error): the running broker must not do it
    # anyway, and a restart must find what the broker does.
    dispatcher, control = setup(spool)
    act(control, "pause", "archive")
    saved = control.state_path.read_bytes()
    control.state_path.unlink()
    control.state_path.parent.rmdir()
    control.state_path.parent.write_bytes(b"")  # control/ a file: every save fails
    for action, name, held in (("pause", "pacs", {"archive"}), ("resume", "archive",
                                                                {"archive"})):
        reply, _ = control.handle(Control("r1", action, name, "", "tester", "127.0.0.1"), 0.0)
        assert not reply.ok and reply.server_error, reply
        assert str(spool.root) in reply.detail and "not done" in reply.detail, reply.detail
        assert dispatcher.held == held
    control.state_path.parent.unlink()
    control.state_path.parent.mkdir()
    control.state_path.write_bytes(saved)
    assert setup(spool)[0].held == {"archive"}


def test_a_drain_cut_short_by_the_spool_says_how_many_moved(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, control = setup(spool)
    for i in range(5):
        commit(spool, dispatcher, make_header(f"ab0{i}"))
    rewrite = spool.rewrite_header
    writes = iter(range(100))

    def failing(header: JobHeader) -> None:
        if next(writes) >= 2:
            raise OSError(28, "No space left on device")
        rewrite(header)

    monkeypatch.setattr(spool, "rewrite_header", failing)
    reply, _ = control.handle(Control("r1", "drain", "pacs", "archive", "tester", ""), 0.0)
    assert not reply.ok and reply.server_error, reply
    assert reply.counts["moved"] == 2 and reply.counts["left"] == 3, reply.counts
    assert reply.detail.startswith("moved 2 queued job(s) from pacs to archive"), reply.detail
    assert "the other 3 stay queued for pacs" in reply.detail, reply.detail
    assert dispatcher.depth("pacs") == 3 and dispatcher.depth("archive") == 2
