"""router/service/strays.py: the supervisor as PID 1 reaps the zombies it did not start, and
never takes the exit status of its own children."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time

from router.service.strays import _is_zombie, reap_strays


def _await_zombie(pid: int) -> None:
    deadline = time.monotonic() + 30
    while not _is_zombie(pid):
        assert time.monotonic() < deadline, f"{pid} never exited"
        time.sleep(0.02)


def test_only_zombies_of_processes_not_its_own_are_reaped() -> None:
    stray = subprocess.Popen([sys.executable, "-c", "pass"])  # an orphan's stand-in
    own = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    mine = multiprocessing.get_context("spawn").Process(target=sys.exit, args=(5,))
    mine.start()
    running = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    try:
        for pid in (stray.pid, own.pid, mine.pid):
            assert pid is not None
            _await_zombie(pid)
        assert reap_strays([own.pid]) == [stray.pid]
        assert own.wait() == 3  # its status was left to it
        mine.join()
        assert mine.exitcode == 5  # and to multiprocessing's Process
        assert running.poll() is None  # a live process is never waited for
    finally:
        running.kill()
        running.wait()
