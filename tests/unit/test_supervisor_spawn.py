"""router/service/supervisor.py: a child that cannot be spawned is retried, not fatal; and
/healthz follows the supervisor's main loop (router/service/heartbeat.py)."""

from __future__ import annotations

import logging
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

from router.core.config import parse_config
from router.core.runtime import Runtime
from router.service.child_process import Child
from router.service.heartbeat import Heartbeat
from router.service.supervisor import Supervisor


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    config = parse_config({
        "spool": {"path": str(tmp_path / "spool")},
        "destinations": {"out": {"type": "folder", "path": str(tmp_path / "out")}},
        "rules": [{"name": "all", "forward": ["out"]}]})
    (tmp_path / "spool").mkdir()
    with tempfile.TemporaryDirectory(prefix="rt-") as folder:
        yield Supervisor(config, Runtime(Path(folder)))


def test_a_failed_spawn_is_logged_and_retried_after_the_crash_loop_delay(
        supervisor: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    """A real OSError from Process.start(): no file descriptor left for its pipes (EMFILE,
    RLIMIT_NOFILE binds root too), as start() raises EAGAIN under a pids limit or ENOMEM
    (those need root-only cgroups here, and RLIMIT_NPROC does not bind root). It used to
    escape the main loop, leaving the router headless for ever."""
    child = Child("sleeper", "time:sleep", (30,))
    resource_tracker.ensure_running()  # its own spawn must not be the one that fails
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with caplog.at_level(logging.ERROR, "router.service.supervisor"):
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1, hard))
        try:
            supervisor._reap(child, 100.0)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert child.process is None
    assert child.not_before == 101.0  # the crash-loop delay, then doubling
    [record] = caplog.records
    assert record.getMessage().startswith("cannot start sleeper: ")
    assert record.exc_info is None  # one line, no traceback

    supervisor._reap(child, 100.5)  # not yet
    assert child.process is None
    supervisor._reap(child, 101.0)  # the spawn works again: the child starts
    try:
        assert child.process is not None and child.process.is_alive()
    finally:
        assert child.process is not None
        child.process.kill()
        child.process.join(10)


def test_healthz_fails_once_the_main_loop_stops_turning(monkeypatch: pytest.MonkeyPatch) -> None:
    heartbeat = Heartbeat()
    assert heartbeat.alive() == (True, "ok")
    heartbeat.beat(0.0)
    later = time.monotonic() + 1.0
    monkeypatch.setattr("router.service.heartbeat.time.monotonic", lambda: later)
    ok, why = heartbeat.alive()
    assert not ok and "has not turned" in why
