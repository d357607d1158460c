"""The supervisor: spawns the broker, the workers and the acceptors, restarts whichever dies,
serves /metrics, /healthz and /readyz, and stops them all in order on SIGTERM or Ctrl-C.

It owns the acceptors' listening sockets (one per acceptor, SO_REUSEPORT on the same port):
it binds them after checking the port with a plain bind, keeps them for the router's
lifetime, and replaces the socket of an acceptor that died when it restarts it."""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import multiprocess

from router.acceptor.admission import AcceptorState
from router.audit.trail import AuditTrail
from router.core import metrics
from router.core.acceptor_seat import AcceptorSeat, SharedLimits
from router.core.config import DicomWebDestination as DicomWebConfig
from router.core.config import RouterConfig, load_config
from router.core.errors import RouterError
from router.core.reload import plan as reload_plan
from router.core.reload import save as save_for_children
from router.core.runtime import Runtime
from router.core.spool import Spool
from router.core.status_snapshots import read_snapshots
from router.core.tls import client_context, server_context
from router.service.control_api import ControlApi
from router.service.control_client import ControlClient
from router.service.http_endpoint import HttpEndpoint
from router.service.http_types import App
from router.service.ports import (
    EXIT_CANNOT_BIND,
    check_bindable,
    describe,
    is_bind_failure,
    listening_socket,
)

log = logging.getLogger(__name__)

# A process that dies faster than this after its start is crash-looping: back off.
MIN_UPTIME_SECONDS = 5.0
MAX_RESTART_DELAY = 30.0


# pydicom imports its pixel-data handlers when it is imported, and they load numpy, GDCM and
# Pillow (about 40 MB) if installed. The acceptor never touches pixel data, the workers only
# in their codec process: they run with them hidden (an import of one raises ImportError,
# which pydicom takes as "not installed").
PIXEL_CODECS = ("numpy", "gdcm", "PIL")


def worker_hidden_modules(config: RouterConfig) -> tuple[str, ...]:
    """What a worker runs without: the pixel codecs, unless a DICOMweb destination needs them
    (dicomweb_client imports numpy and Pillow)."""
    if any(isinstance(spec, DicomWebConfig) for spec in config.destinations.values()):
        return ()
    return PIXEL_CODECS


def run_child(entry: str, without: tuple[str, ...], *args: Any) -> None:
    """Every spawned process starts here and imports its own module ("module:function"),
    with the modules named in `without` made unimportable.

    The supervisor itself then never imports pynetdicom or pydicom (tens of MB per process);
    the broker does not either (tests/integration/test_process_imports.py checks both).
    """
    # Until the child's own handler is in place, a SIGHUP (a config reload) must not kill it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for name in without:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    module, function = entry.split(":")
    try:
        getattr(importlib.import_module(module), function)(*args)
    except OSError as exc:
        if not is_bind_failure(exc):
            raise
        # Restarting would fail the same way: the supervisor stops the router (EXIT_CANNOT_BIND).
        logging.getLogger(module).error("cannot bind a listening socket: %s", exc)
        sys.exit(EXIT_CANNOT_BIND)


@dataclass
class Child:
    name: str
    entry: str  # "module:function", run in the child by run_child
    args: tuple[Any, ...]
    without: tuple[str, ...] = ()  # modules the child must not load (run_child)
    process: BaseProcess | None = None
    started_at: float = 0.0
    restart_delay: float = 0.0
    not_before: float = 0.0
    restarts: int = field(default=0)


class Supervisor:
    def __init__(self, config: RouterConfig, runtime: Runtime,
                 config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path  # None: the built-in default, nothing to reload
        self.runtime = runtime
        self.started_at = time.time()
        self.reload_requested = threading.Event()
        self.generation = 0  # of the config handed to the children (router/core/reload.py)
        self.mp = multiprocessing.get_context("spawn")  # never fork: pynetdicom/zmq threads
        self.stopping = threading.Event()
        acceptors = config.listen.acceptors
        # Written by each acceptor (AcceptorState codes): whether it takes work, and why not.
        self.acceptor_states = [self.mp.Value("i", AcceptorState.STARTING, lock=False)
                                for _ in range(acceptors)]
        self.limits = SharedLimits.create(config.listen, acceptors, runtime.directory)
        self.listeners: dict[int, socket.socket] = {}  # by acceptor index, while it runs
        # Order matters: the broker first (others connect to it), the acceptors last.
        self.children = [
            Child("broker", "router.broker.main:main", (config, runtime)),
            # Workers transcode in a codec process of their own (workers/transforms/
            # codec_process.py), so they too run without the pixel codecs.
            *[Child(f"worker-{i}", "workers.main:main", (config, runtime, i),
                    without=worker_hidden_modules(config)) for i in range(config.workers)],
            *[Child(f"acceptor-{i}", "router.acceptor.main:main", (config, runtime),
                    without=PIXEL_CODECS) for i in range(1, acceptors + 1)],
        ]
        self.http: HttpEndpoint | None = None
        self.console: Any = None  # router/console/server.ConsoleServer on its own port
        self.fatal: str | None = None  # why the router stops by itself (exit 1)

    def ready(self) -> tuple[bool, str]:
        """Ready while the broker and every worker run and at least one acceptor accepts:
        the kernel sends new connections only to acceptors that listen, and an acceptor
        being restarted has no listening socket."""
        if self.stopping.is_set():
            return False, "draining: not accepting work"
        down = [c.name for c in self.children if c.process is None or not c.process.is_alive()]
        pipeline_down = [name for name in down if not name.startswith("acceptor-")]
        if pipeline_down:
            return False, f"not running: {', '.join(pipeline_down)}"
        states = [int(s.value) for s in self.acceptor_states]
        if AcceptorState.ACCEPTING not in states:
            # The disk and the queue are the same for all: the first reason says it.
            reasons = [s for s in states if s != AcceptorState.STARTING]
            return False, AcceptorState.MESSAGES[reasons[0] if reasons
                                                 else AcceptorState.STARTING]
        if down:
            return True, f"ready; not running: {', '.join(down)}"
        return True, AcceptorState.MESSAGES[AcceptorState.ACCEPTING]

    def _process_row(self, child: Child) -> dict[str, Any]:
        row = {"name": child.name, "pid": child.process.pid if child.process else None,
               "alive": bool(child.process and child.process.is_alive()),
               "restarts": child.restarts}
        if child.name.startswith("acceptor-"):
            row["state"] = AcceptorState.NAMES[int(self._state_of(child).value)]
        return row

    def _state_of(self, child: Child) -> Any:
        return self.acceptor_states[int(child.name.rpartition("-")[2]) - 1]

    def status(self) -> dict[str, Any]:
        """GET /status: the processes, readiness and the children's live snapshots."""
        ok, why = self.ready()
        return {
            "version": _version(),
            "ae_title": self.config.ae_title,
            "listen": f"{self.config.listen.host}:{self.config.listen.port}",
            "started_at": self.started_at,
            "ready": ok,
            "ready_reason": why,
            "config": {"path": str(self.config_path) if self.config_path else None},
            "processes": [self._process_row(c) for c in self.children],
            **read_snapshots(self.runtime.status_dir),
        }

    def _apps(self, audit: AuditTrail | None) -> list[App]:
        """The operator API (and the console) on the HTTP port."""
        from router.service.console import wiring  # argon2 and the pages only when configured

        client = ControlClient(self.runtime.frontend)
        api = ControlApi(lambda: self.config, client, self._destinations, audit)
        settings = self.config.console
        if settings.enabled and settings.port is None and not self.config.metrics.enabled:
            raise RouterError("console.enabled without console.port is served on the metrics "
                              "port, but metrics.enabled is false: set console.port or "
                              "enable metrics")
        try:
            console, self.console = wiring.build(lambda: self.config, api, self.status,
                                                 self.runtime.metrics_dir, audit)
        except OSError as exc:
            raise RouterError(f"cannot listen for the console on "
                              f"{describe(settings.host, settings.port or 0)} "
                              f"(console.host/console.port): {exc.strerror}") from None
        return [api] if console is None else [api, console]

    def _destinations(self) -> dict[str, Any]:
        broker = read_snapshots(self.runtime.status_dir).get("broker", {})
        return dict(broker.get("destinations", {}))

    def _start(self, child: Child) -> None:
        if child.name.startswith("acceptor-"):
            child.args = (*child.args[:2], self._seat(child))
        process = self.mp.Process(target=run_child,
                                  args=(child.entry, child.without, *child.args),
                                  name=child.name)
        process.start()
        child.process, child.started_at = process, time.monotonic()
        log.info("started %s (pid %s)", child.name, process.pid)

    def _seat(self, child: Child) -> AcceptorSeat:
        """The acceptor's listening socket (a new one after a death) and shared state."""
        index = int(child.name.rpartition("-")[2])
        if index not in self.listeners:
            listen = self.config.listen
            if not self.listeners:  # no sibling holds the port: it may have been taken
                check_bindable(listen.host, listen.port, "DICOM", "listen.host/listen.port")
            self.listeners[index] = listening_socket(listen.host, listen.port, listen.backlog,
                                                     "DICOM", "listen.host/listen.port")
        return AcceptorSeat(index, self.acceptor_states[index - 1], self.listeners[index],
                            self.limits)

    def _reap(self, child: Child, now: float) -> None:
        process = child.process
        if process is None or process.is_alive():
            if child.process is None and now >= child.not_before:
                try:
                    self._start(child)
                except RouterError as exc:  # its port was taken while it was down
                    self._cannot_bind(child, str(exc))
            return
        code = process.exitcode
        multiprocess.mark_process_dead(process.pid)
        if code == EXIT_CANNOT_BIND:
            self._cannot_bind(child)  # no restart: it would fail the same way
            return
        if child.name.startswith("acceptor-"):
            self._acceptor_died(child)
        child.process = None
        quick = now - child.started_at < MIN_UPTIME_SECONDS
        child.restart_delay = min(MAX_RESTART_DELAY, max(1.0, child.restart_delay * 2)) if quick \
            else 0.0
        child.not_before = now + child.restart_delay
        child.restarts += 1
        metrics.RESTARTS.labels(child.name.split("-")[0]).inc()
        log.error("%s (pid %s) exited with code %s; restarting in %.0fs",
                  child.name, process.pid, code, child.restart_delay)

    def _acceptor_died(self, child: Child) -> None:
        """Close its socket (the kernel then sends every new connection to the others; one
        waiting in its backlog is reset, never acknowledged) and drop its counts."""
        index = int(child.name.rpartition("-")[2])
        self.acceptor_states[index - 1].value = AcceptorState.STARTING
        sock = self.listeners.pop(index, None)
        if sock is not None:
            sock.close()
        self.limits.forget(index - 1)

    def _cannot_bind(self, child: Child, why: str = "see its message above") -> None:
        listen = self.config.listen
        address = describe(listen.host, listen.port) if child.name.startswith("acceptor") \
            else "its address"
        self.fatal = f"{child.name} cannot listen on {address}"
        log.error("%s cannot listen on %s (%s): a port that cannot be bound is a "
                  "configuration error; stopping the router", child.name, address, why)
        self.stopping.set()

    def check_ports(self) -> None:
        """Bind the DICOM and the HTTP ports once before spawning anything."""
        listen, http = self.config.listen, self.config.metrics
        check_bindable(listen.host, listen.port, "DICOM", "listen.host/listen.port")
        if http.enabled and http.port:
            check_bindable(http.host, http.port, "metrics and health (HTTP)",
                           "metrics.host/metrics.port")

    def check_tls(self) -> None:
        """Load every TLS context once before starting: a wrong password or a missing file is
        a clear startup error, not a crash loop of a child process."""
        self._check_tls(self.config)

    @staticmethod
    def _check_tls(config: RouterConfig) -> None:
        if config.listen.tls.mode != "off":
            server_context(config.listen.tls)
        for name, dest in config.destinations.items():
            tls = getattr(dest, "tls", None)
            if tls is not None and tls.mode != "off":
                client_context(tls, f"destinations.{name}.tls")

    def run(self) -> int:
        self.check_tls()
        self.check_ports()
        for child in self.children:
            if child.name.startswith("acceptor-"):
                self._seat(child)  # bind every acceptor's socket now, not after the spawns
        spool = Spool(self.config.spool.path).create()
        leftovers = spool.clear_incoming() + spool.remove_orphans()
        if leftovers:
            log.warning("removed %d half-received files from an earlier run", leftovers)
        metrics.BUILD_INFO.labels(_version()).set(1)
        audit = AuditTrail(self.config.audit, self.config.ae_title) \
            if self.config.audit.enabled else None
        apps = self._apps(audit)
        if self.config.metrics.enabled:
            m = self.config.metrics
            try:
                self.http = HttpEndpoint(m.host, m.port, str(self.runtime.metrics_dir),
                                         self.ready, self.status, m.request_timeout,
                                         m.max_connections, apps)
            except OSError as exc:  # taken since check_ports
                raise RouterError(f"cannot listen for metrics and health (HTTP) on "
                                  f"{describe(m.host, m.port)} (metrics.host/metrics.port): "
                                  f"{exc.strerror}") from None
            self.http.start()
        if self.console is not None:
            self.console.start()
        for child in self.children:
            self._start(child)  # the acceptors' sockets: bound here, just after check_ports
        self._install_signals()
        if audit is not None:
            audit.application_started()
        metrics.CONFIG_RELOADED_AT.set(time.time())
        while not self.stopping.wait(0.5):
            now = time.monotonic()
            for child in self.children:
                self._reap(child, now)
            metrics.READY.set(1 if self.ready()[0] else 0)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
        self._stop_children()
        if audit is not None:
            audit.application_stopped()
            audit.close()
        if self.http:
            self.http.stop()
        if self.console is not None:
            self.console.stop()
        if self.fatal is not None:
            log.error("router stopped: %s", self.fatal)
            return 1
        log.info("router stopped")
        return 0

    def _install_signals(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.stopping.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.reload_requested.set()  # the main loop reloads: never block in a handler

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hup)

    # --- config reload (SIGHUP) -------------------------------------------------------------

    def reload(self) -> None:
        """Validate the config file again and hand it to the children; refuse a bad one whole.

        Every SIGHUP also reloads TLS certificates and keys, whatever happens to the config.
        """
        if self.config_path is None:
            log.info("SIGHUP: reloading TLS material (the built-in default config has no file)")
            self._hup_children()
            return
        try:
            new = load_config(self.config_path)
            self._check_tls(new)
            steps = reload_plan(self.config, new)
        except RouterError as exc:
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            log.error("config reload refused; the running config stays in force: %s", exc)
            self._hup_children()
            return
        if not steps.changed:
            metrics.CONFIG_RELOADS.labels("unchanged").inc()
            log.info("SIGHUP: %s is unchanged; reloading TLS material", self.config_path)
            self._hup_children()
            return
        self.generation += 1
        save_for_children(new, self.runtime.directory, self.generation)
        self.config = new
        restart_workers = steps.pipeline
        for child in self.children:
            child.args = (new, *child.args[1:])  # a later restart starts with the new config
            if child.name.startswith("worker-") and child.without != worker_hidden_modules(new):
                child.without = worker_hidden_modules(new)  # a DICOMweb destination came or went
                restart_workers = True
        # Broker, then workers, then acceptor: no job is routed to a destination the broker
        # and the workers do not know yet.
        self._hup_children("broker")
        self._await_broker_generation()
        if restart_workers:
            self._restart_workers()  # they start with the new config and fresh TLS material
            self._hup_children("acceptor")
        else:
            self._hup_children("worker-", "acceptor")
        metrics.CONFIG_RELOADS.labels("applied").inc()
        metrics.CONFIG_RELOADED_AT.set(time.time())
        log.info("config reloaded from %s; changed: %s", self.config_path,
                 ", ".join(steps.changed))

    def _hup_children(self, *names: str) -> None:
        """SIGHUP the children whose names start with one of `names` (all without)."""
        for child in self.children:
            if names and not child.name.startswith(names):
                continue
            if child.process is not None and child.process.pid and child.process.is_alive():
                os.kill(child.process.pid, signal.SIGHUP)

    def _await_broker_generation(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            broker = read_snapshots(self.runtime.status_dir).get("broker", {})
            if broker.get("config_generation") == self.generation:
                return
            time.sleep(0.1)
        log.warning("the broker did not confirm the reloaded config within %.0fs; applying it "
                    "to the other processes anyway (a job for a new destination may become a "
                    "dead letter you can replay)", timeout)

    def _restart_workers(self) -> None:
        """One at a time, so deliveries go on: each finishes what it holds, then restarts."""
        grace = self.config.listen.dimse_timeout + 5
        for child in [c for c in self.children if c.name.startswith("worker-")]:
            process = child.process
            if process is None:
                continue
            process.terminate()
            process.join(grace)
            if process.is_alive():
                log.error("%s did not stop within %.0fs; killing it", child.name, grace)
                process.kill()
                process.join(5)
            multiprocess.mark_process_dead(process.pid)
            self._start(child)

    def _stop_children(self) -> None:
        """Acceptor first (no new work), then workers (finish what they hold), broker last."""
        grace = self.config.drain_grace + self.config.listen.dimse_timeout + 5
        for sock in self.listeners.values():
            sock.close()  # the acceptors' own copies stay open until each stops listening
        self.listeners.clear()
        acceptors = [c.name for c in self.children if c.name.startswith("acceptor-")]
        for group in (acceptors, [c.name for c in self.children if c.name.startswith("w")],
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
