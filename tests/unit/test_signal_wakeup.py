"""The broker's and a worker's zmq loops drain the signal wakeup socket after a signal.

pyzmq keys a plain socket's readiness by its file descriptor: the loops looked for the
object, never drained the socket, and after the first SIGHUP (a config reload) every poll
returned at once: the broker and each worker spun at full CPU (measured: 19% and 21% of a
core idle with 10 rules, 67% for a broker with 300 destinations down), for good.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.broker.main import Broker
from router.core.config import RouterConfig, parse_config
from router.core.process_util import SignalWakeup
from router.core.runtime import Runtime
from router.core.spool import Spool
from workers.main import Worker


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with tempfile.TemporaryDirectory(prefix="rt-") as folder:  # short: IPC socket paths
        yield Runtime(Path(folder))


@pytest.fixture
def signalled() -> Iterator[SignalWakeup]:
    """A wakeup socket that a signal (SIGUSR1, handled) has just written to."""
    previous_fd = signal.set_wakeup_fd(-1)
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    wakeup = SignalWakeup()
    os.kill(os.getpid(), signal.SIGUSR1)
    yield wakeup
    signal.set_wakeup_fd(previous_fd)
    signal.signal(signal.SIGUSR1, previous)
    wakeup.reader.close()


def _unread(wakeup: SignalWakeup) -> bool:
    try:
        return bool(wakeup.reader.recv(256))
    except BlockingIOError:
        return False


def _config(tmp_path: Path) -> RouterConfig:
    return parse_config({
        "spool": {"path": str(tmp_path / "spool")}, "worker_threads": 1,
        "destinations": {"pacs": {"type": "folder", "path": str(tmp_path / "out")}},
        "rules": [{"name": "all", "forward": ["pacs"]}]})


def test_the_broker_loop_drains_the_wakeup_after_a_signal(
        tmp_path: Path, runtime: Runtime, signalled: SignalWakeup) -> None:
    config = _config(tmp_path)
    broker = Broker(config, runtime, Spool(tmp_path / "spool").create())
    stop = threading.Event()
    turns = []
    housekeeping = broker._housekeeping

    def counted(now: float) -> None:
        housekeeping(now)
        turns.append(now)
        if len(turns) == 2:
            stop.set()

    broker._housekeeping = counted  # type: ignore[method-assign]
    try:
        broker.run(stop, signalled)
    finally:
        broker.close()
    assert not _unread(signalled), "left readable: every later poll returns at once"


def test_a_worker_loop_drains_the_wakeup_after_a_signal(
        tmp_path: Path, runtime: Runtime, signalled: SignalWakeup) -> None:
    Spool(tmp_path / "spool").create()
    worker = Worker(_config(tmp_path), runtime, 0)
    stop = threading.Event()
    turns = []
    abort_overdue = worker.relays.abort_overdue

    def counted(now: float, **grace: float) -> None:
        abort_overdue(now, **grace)
        turns.append(now)
        if len(turns) == 2:
            stop.set()

    worker.relays.abort_overdue = counted  # type: ignore[method-assign]
    worker.run(stop, signalled)
    assert not _unread(signalled), "left readable: every later poll returns at once"


def test_a_signals_action_wakes_the_poll_again_once_it_ran(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Regression: SIGTERM's action (setting the stop event) runs on a thread of its own; a
    loop that woke on the signal's byte and drained it before that thread ran saw no stop
    and slept a whole poll (a second): every worker's and the broker's stop, so every
    router's stop and reload, took a second longer, now and then. The action's thread now
    writes to the wakeup socket once more after the action."""
    import select

    from router.core import process_util

    previous_fd = signal.set_wakeup_fd(-1)
    previous = signal.getsignal(signal.SIGUSR2)
    monkeypatch.setattr(process_util, "_poll_wakeup", None)
    drained, stopped = threading.Event(), threading.Event()

    def act(signum: int) -> None:
        drained.wait(10)  # the loop drained the signal's own byte first
        stopped.set()

    try:
        process_util.run_on_signal([signal.SIGUSR2], act)
        wakeup = SignalWakeup()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert select.select([wakeup.reader], [], [], 10)[0]  # the signal's own byte
        wakeup.drain()
        drained.set()
        assert stopped.wait(10)
        assert select.select([wakeup.reader], [], [], 10)[0], "the loop would sleep on"
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGUSR2, previous)
