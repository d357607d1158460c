"""The supervisor: spawns the broker, the workers and the acceptor, restarts whichever dies,
serves /metrics, /healthz and /readyz, and stops them all in order on SIGTERM or Ctrl-C."""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from prometheus_client import multiprocess

from router import metrics
from router.admission import AcceptorState
from router.audit import AuditTrail
from router.config import RouterConfig
from router.http_endpoint import HttpEndpoint
from router.runtime import Runtime
from router.spool import Spool
from router.tls import client_context, server_context

log = logging.getLogger(__name__)

# A process that dies faster than this after its start is crash-looping: back off.
MIN_UPTIME_SECONDS = 5.0
MAX_RESTART_DELAY = 30.0


def run_child(entry: str, *args: Any) -> None:
    """Every spawned process starts here and imports its own module ("module:function").

    The supervisor itself then never imports pynetdicom or pydicom (tens of MB per process);
    the broker does not either.
    """
    module, function = entry.split(":")
    getattr(importlib.import_module(module), function)(*args)


@dataclass
class Child:
    name: str
    entry: str  # "module:function", run in the child by run_child
    args: tuple[Any, ...]
    process: BaseProcess | None = None
    started_at: float = 0.0
    restart_delay: float = 0.0
    not_before: float = 0.0
    restarts: int = field(default=0)


class Supervisor:
    def __init__(self, config: RouterConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.mp = multiprocessing.get_context("spawn")  # never fork: pynetdicom/zmq threads
        self.stopping = threading.Event()
        # Written by the acceptor (AcceptorState codes): whether it takes work, and why not.
        self.acceptor_state = self.mp.Value("i", AcceptorState.STARTING, lock=False)
        # Order matters: the broker first (others connect to it), the acceptor last.
        self.children = [
            Child("broker", "router.broker:main", (config, runtime)),
            *[Child(f"worker-{i}", "workers.worker:main", (config, runtime, i))
              for i in range(config.workers)],
            Child("acceptor", "router.acceptor:main", (config, runtime, self.acceptor_state)),
        ]
        self.http: HttpEndpoint | None = None

    def ready(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "draining: not accepting work"
        down = [c.name for c in self.children if c.process is None or not c.process.is_alive()]
        if down:
            return False, f"not running: {', '.join(down)}"
        state = int(self.acceptor_state.value)
        return state == AcceptorState.ACCEPTING, AcceptorState.MESSAGES[state]

    def _start(self, child: Child) -> None:
        process = self.mp.Process(target=run_child, args=(child.entry, *child.args),
                                  name=child.name)
        process.start()
        child.process, child.started_at = process, time.monotonic()
        log.info("started %s (pid %s)", child.name, process.pid)

    def _reap(self, child: Child, now: float) -> None:
        process = child.process
        if process is None or process.is_alive():
            if child.process is None and now >= child.not_before:
                self._start(child)
            return
        code = process.exitcode
        multiprocess.mark_process_dead(process.pid)
        if child.name == "acceptor":
            self.acceptor_state.value = AcceptorState.STARTING  # died: not accepting any more
        child.process = None
        quick = now - child.started_at < MIN_UPTIME_SECONDS
        child.restart_delay = min(MAX_RESTART_DELAY, max(1.0, child.restart_delay * 2)) if quick \
            else 0.0
        child.not_before = now + child.restart_delay
        child.restarts += 1
        metrics.RESTARTS.labels(child.name.split("-")[0]).inc()
        log.error("%s (pid %s) exited with code %s; restarting in %.0fs",
                  child.name, process.pid, code, child.restart_delay)

    def check_tls(self) -> None:
        """Load every TLS context once before starting: a wrong password or a missing file is
        a clear startup error, not a crash loop of a child process."""
        if self.config.listen.tls.mode != "off":
            server_context(self.config.listen.tls)
        for name, dest in self.config.destinations.items():
            tls = getattr(dest, "tls", None)
            if tls is not None and tls.mode != "off":
                client_context(tls, f"destinations.{name}.tls")

    def run(self) -> int:
        self.check_tls()
        spool = Spool(self.config.spool.path).create()
        leftovers = spool.clear_incoming() + spool.remove_orphans()
        if leftovers:
            log.warning("removed %d half-received files from an earlier run", leftovers)
        metrics.BUILD_INFO.labels(_version()).set(1)
        if self.config.metrics.enabled:
            m = self.config.metrics
            self.http = HttpEndpoint(m.host, m.port, str(self.runtime.metrics_dir), self.ready)
            self.http.start()
        audit = AuditTrail(self.config.audit, self.config.ae_title) \
            if self.config.audit.enabled else None
        for child in self.children:
            self._start(child)
        self._install_signals()
        if audit is not None:
            audit.application_started()
        while not self.stopping.wait(0.5):
            now = time.monotonic()
            for child in self.children:
                self._reap(child, now)
        self._stop_children()
        if audit is not None:
            audit.application_stopped()
            audit.close()
        if self.http:
            self.http.stop()
        log.info("router stopped")
        return 0

    def _install_signals(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.stopping.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            log.info("received SIGHUP: reloading TLS certificates and keys")
            for child in self.children:
                if child.process is not None and child.process.pid and child.name != "broker":
                    os.kill(child.process.pid, signal.SIGHUP)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hup)

    def _stop_children(self) -> None:
        """Acceptor first (no new work), then workers (finish what they hold), broker last."""
        grace = self.config.drain_grace + self.config.listen.dimse_timeout + 5
        for group in (["acceptor"], [c.name for c in self.children if c.name.startswith("w")],
                      ["broker"]):
            members = [c for c in self.children if c.name in group and c.process is not None]
            for child in members:
                assert child.process is not None
                if child.process.is_alive():
                    child.process.terminate()  # SIGTERM: each process stops in its own way
            for child in members:
                assert child.process is not None
                child.process.join(grace)
                if child.process.is_alive():
                    log.error("%s did not stop within %.0fs; killing it", child.name, grace)
                    child.process.kill()
                    child.process.join(5)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dicom-router")
    except PackageNotFoundError:
        return "unknown"
