"""The children's side of a config reload: SIGHUPs that reach every child (also one that
was starting when it was sent), the waits for the broker to take the new config, and the
workers' restart one at a time. The supervisor decides what a reload changes
(router/service/supervisor.py); this module only carries it out."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from router.core import metrics
from router.core.status_snapshots import read_snapshots
from router.service.child_process import Child
from router.service.readiness import heeds_sighup

log = logging.getLogger(__name__)

# A restarted worker connects within a few seconds (spawn, imports, its broker handshake).
WORKER_READY_SECONDS = 30.0
# How long the broker gets to confirm a reloaded config before the others get it anyway.
BROKER_CONFIRM_SECONDS = 10.0


class ReloadSteps:
    def __init__(self, children: list[Child], status_dir: Path, stopping: threading.Event,
                 tend: Callable[[Child], None], start: Callable[[Child], None]) -> None:
        self.children = children
        self.status_dir = status_dir
        self.stopping = stopping
        self._tend_one = tend  # the main loop's restart of a child that died
        self._start = start
        self.replacing: str | None = None  # the worker being replaced right now

    def hup(self, *names: str) -> None:
        """SIGHUP the children whose names start with one of `names` (all without)."""
        snapshots = read_snapshots(self.status_dir)
        for child in self.children:
            if names and not child.name.startswith(names):
                continue
            if child.process is not None and child.process.pid and child.process.is_alive():
                os.kill(child.process.pid, signal.SIGHUP)
                # One restarted after a crash and still starting ignores it (run_child), and
                # its args are the config it was spawned with: send it again once it reports.
                child.hup_owed = child.hup_owed or not heeds_sighup(child, snapshots)

    def resend_lost_hups(self) -> None:
        """SIGHUP again the children that were starting when one was sent, once they report
        (a second SIGHUP to one that heeded the first reloads nothing new)."""
        owed = [c for c in self.children if c.hup_owed]
        if not owed:
            return
        snapshots = read_snapshots(self.status_dir)
        for child in owed:
            if child.process is None or child.process.pid is None \
                    or not child.process.is_alive():
                child.hup_owed = False  # its restart starts with the config in force
            elif heeds_sighup(child, snapshots):
                child.hup_owed = False
                log.info("%s was starting during a SIGHUP: sending it again", child.name)
                os.kill(child.process.pid, signal.SIGHUP)

    def tend(self) -> None:
        """During a reload's waits: the children not being replaced are restarted when they
        die, as the main loop does (a broker killed mid-reload stayed dead for the minute
        the reload then waited for workers to reach it)."""
        for child in self.children:
            if child.name != self.replacing:
                self._tend_one(child)

    def await_broker_generation(self, generation: int,
                                timeout: float = BROKER_CONFIRM_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            self.tend()
            self.resend_lost_hups()  # a broker restarted just before the reload
            broker = read_snapshots(self.status_dir).get("broker", {})
            if broker.get("config_generation") == generation:
                return
            time.sleep(0.1)
        log.warning("the broker did not confirm the reloaded config within %.0fs; applying it "
                    "to the other processes anyway (a job for a new destination may become a "
                    "dead letter you can replay)", timeout)

    def restart_workers(self, grace: float) -> None:
        """One at a time, so deliveries go on: each finishes what it holds (within `grace`),
        then restarts, and the next is stopped only once the new one is connected to the
        broker (with one worker, deliveries pause for its restart)."""
        for child in [c for c in self.children if c.name.startswith("worker-")]:
            process = child.process
            if process is None:
                continue
            self.replacing = child.name  # readiness leaves it out: it is being replaced
            try:
                process.terminate()
                stop_by = time.monotonic() + grace
                while process.is_alive() and time.monotonic() < stop_by:
                    process.join(0.2)
                    self.tend()
                if process.is_alive():
                    log.error("%s did not stop within %.0fs; killing it", child.name, grace)
                    process.kill()
                    process.join(5)
                metrics.mark_dead(process.pid)
                self._start(child)
                if child.process is not None and child.process.pid is not None:
                    self._await_worker(child.name, child.process.pid)
            finally:
                self.replacing = None

    def _await_worker(self, name: str, pid: int, timeout: float = WORKER_READY_SECONDS) -> None:
        marker = f"-{pid}-"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            self.tend()
            broker = read_snapshots(self.status_dir).get("broker", {})
            if any(marker in str(w) for w in broker.get("worker_ids", ())):
                return
            time.sleep(0.1)
        log.warning("%s did not connect to the broker within %.0fs of its restart; going on "
                    "with the reload", name, timeout)
