"""The supervisor: spawns the broker, the workers and the acceptors, restarts whichever dies,
serves /metrics, /healthz and /readyz, and stops them all in order on SIGTERM or Ctrl-C.

It owns the acceptors' listening sockets (one per acceptor, SO_REUSEPORT on the same port):
it binds them after checking the port with a plain bind, keeps them for the router's
lifetime, and replaces the socket of an acceptor that died when it restarts it."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from router.audit.operator import record_config_change
from router.audit.trail import AuditTrail
from router.core import metrics
from router.core.config import RouterConfig, load_config
from router.core.errors import RouterError
from router.core.peer_address import host_port
from router.core.process_util import run_on_signal, setup_logging
from router.core.reload import plan as reload_plan
from router.core.reload import save as save_for_children
from router.core.runtime import Runtime
from router.core.spool import Spool
from router.core.spool_lock import STALE_CHILD_MARGIN, Tenancy, await_old_children, hold_spool
from router.relay.commitment_results import KeptResults
from router.service import preflight, supervisor_views
from router.service.acceptor_seats import AcceptorSeats
from router.service.child_process import PIXEL_CODECS, Child, run_child, worker_hidden_modules
from router.service.heartbeat import STALE_SECONDS, Heartbeat
from router.service.http_endpoint import HttpEndpoint
from router.service.ports import EXIT_CANNOT_BIND
from router.service.readiness import readiness
from router.service.reload_steps import (
    BROKER_CONFIRM_SECONDS,
    WORKER_READY_SECONDS,
    ReloadSteps,
)
from router.service.strays import reap_strays
from router.service.supervisor_views import acceptor_index

log = logging.getLogger(__name__)

# A SIGHUP that came while the router started is acted on once it is ready, or after this
# long if it never is (a child that started ignores SIGHUP until its handler is in place).
RELOAD_AFTER_SECONDS = 60.0


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
        self.wake = threading.Event()  # ends the main loop's wait early (_next_turn)
        self.heartbeat = Heartbeat()  # /healthz: the main loop turns (router/service/heartbeat.py)
        acceptors = config.listen.acceptors
        self.seats = AcceptorSeats(config.listen, self.mp, runtime.directory)
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
        self.reload_steps = ReloadSteps(self.children, runtime.status_dir, self.stopping,
                                 lambda child: self._reap(child, time.monotonic()), self._start)
        self.http: HttpEndpoint | None = None
        self.console: Any = None  # router/console/server.ConsoleServer on its own port
        self.audit: AuditTrail | None = None
        self.fatal: str | None = None  # why the router stops by itself (exit 1)
        self._spool_lock: int | None = None  # held until the process ends (spool_lock.py)
        self.kept_results = KeptResults(config.spool.state_folder("commitments"))
        self.commitment_results_kept = 0  # for /status, counted by the main loop

    def ready(self) -> tuple[bool, str]:
        """/readyz: router/service/readiness.py."""
        if self.stopping.is_set():
            return False, "draining: not accepting work"
        return readiness(self.children, self.reload_steps.replacing, self.runtime.status_dir,
                         self.seats)

    def status(self) -> dict[str, Any]:
        """GET /status (router/service/supervisor_views.py)."""
        return supervisor_views.status(self)

    def _start(self, child: Child) -> None:
        if child.is_acceptor:
            # Its listening socket (a new one after a death) and the shared state.
            child.args = (*child.args[:2], self.seats.seat(acceptor_index(child)))
        tenancy = Tenancy(Path(self.config.spool.path).resolve(), os.getpid())
        process = self.mp.Process(target=run_child,
                                  args=(child.entry, child.without, tenancy, *child.args),
                                  name=child.name)
        # A blocked signal stays blocked across fork and exec: a SIGHUP (a reload) cannot
        # kill the child while it imports, until run_child ignores it. Ours still arrives
        # meanwhile, through another thread of this process (the handler is process-wide).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        child.started(process, time.monotonic())
        log.info("started %s (pid %s)", child.name, process.pid)

    def _reap(self, child: Child, now: float) -> None:
        process = child.process
        if process is None or process.is_alive():
            if child.process is None and now >= child.not_before:
                self._try_start(child, now)
            return
        code = process.exitcode
        metrics.mark_dead(process.pid)
        if code == EXIT_CANNOT_BIND:
            self._cannot_bind(child)  # no restart: it would fail the same way
            return
        if child.is_acceptor:
            self.seats.vacate(acceptor_index(child))
        child.died(now)
        metrics.RESTARTS.labels(child.name.split("-")[0]).inc()
        log.error("%s (pid %s) exited with code %s; restarting in %.0fs",
                  child.name, process.pid, code, child.restart_delay)

    def _try_start(self, child: Child, now: float) -> None:
        try:
            self._start(child)
        except RouterError as exc:  # its port was taken while it was down
            self._cannot_bind(child, str(exc))
        except OSError as exc:  # no process to be had now (pids limit, memory): try again
            child.could_not_start(now)
            log.error("cannot start %s: %s; trying again in %.0fs", child.name,
                      exc.strerror or exc, child.restart_delay)

    def _cannot_bind(self, child: Child, why: str = "see its message above") -> None:
        listen = self.config.listen
        address = host_port(listen.host, listen.port) if child.name.startswith("acceptor") \
            else "its address"
        self.fatal = f"{child.name} cannot listen on {address}"
        log.error("%s cannot listen on %s (%s): a port that cannot be bound is a "
                  "configuration error; stopping the router", child.name, address, why)
        self.stopping.set()

    def _stop_grace(self) -> float:
        """How long each group of children gets to stop (_stop_children)."""
        return self.config.drain_grace + self.config.listen.dimse_timeout + 5

    def _own_spool(self) -> Spool | None:
        """Lock the spool, then wait for the children of a supervisor killed alone to leave
        it (router/core/spool_lock.py); None if told to stop meanwhile."""
        spool = Spool(self.config.spool.path).create()
        self._spool_lock, previous = hold_spool(spool.root, self._stop_grace())
        if not await_old_children(spool.root, previous + STALE_CHILD_MARGIN, self.stopping):
            return None
        return spool

    def run(self) -> int:
        self._install_signals()  # before anything is spawned: a SIGHUP then only sets a flag
        preflight.check_tls(self.config)
        preflight.check_shared_state(self.config)
        preflight.warn_burned_in(self.config)
        preflight.warn_shared_completions(self.config)
        # Before the ports: an earlier router's orphaned acceptor may still listen on them.
        spool = self._own_spool()  # before anything touches the spool
        if spool is None:
            log.info("router stopped")
            return 0
        preflight.check_ports(self.config)
        for child in self.children:
            if child.is_acceptor:
                self.seats.seat(acceptor_index(child))  # bind them all before the spawns
        if self.config.spool.shared_state_dir:
            preflight.check_cell_id(spool.root)  # before any acceptor names its moves by it
        leftovers = spool.clear_incoming() + spool.remove_orphans()
        if leftovers:
            log.warning("removed %d half-received files from an earlier run", leftovers)
        metrics.BUILD_INFO.labels(preflight.version()).set(1)
        audit = self.audit = AuditTrail(self.config.audit, self.config.ae_title) \
            if self.config.audit.enabled else None
        apps = supervisor_views.operator_apps(self, audit)
        # The start's long steps (an earlier router's children, the spool's leftovers) are
        # behind us: /healthz counts from here, and spawning the children is one more turn.
        self.heartbeat.beat(STALE_SECONDS + 30)
        if self.config.metrics.enabled:
            m = self.config.metrics
            try:
                self.http = HttpEndpoint(m.host, m.port, str(self.runtime.metrics_dir),
                                         self.ready, self.status, m.request_timeout,
                                         m.max_connections, apps,
                                         m.max_connections_per_source,
                                         self.heartbeat.alive)
            except OSError as exc:  # taken since check_ports
                raise RouterError(f"cannot listen for metrics and health (HTTP) on "
                                  f"{host_port(m.host, m.port)} (metrics.host/metrics.port): "
                                  f"{exc.strerror}") from None
            self.http.start()
        if self.console is not None:
            self.console.start()
        try:
            self._supervise(audit)
        except Exception:  # a bug: stop the children rather than leave them headless
            log.exception("the supervisor's main loop failed; stopping the router")
            self.fatal = "the supervisor's main loop failed (see the error above)"
        # Draining takes up to a grace per group of children: still alive meanwhile.
        self.heartbeat.beat(3 * self._stop_grace() + 10)
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

    def _supervise(self, audit: AuditTrail | None) -> None:
        """Start the children, then restart whichever dies until told to stop."""
        for child in self.children:
            # The acceptors' sockets: bound here, just after check_ports.
            self._try_start(child, time.monotonic())
        if audit is not None:
            audit.application_started()
        metrics.CONFIG_RELOADED_AT.set(time.time())
        has_run = False  # ready once: every child has its own SIGHUP handler by then
        while not self._next_turn():
            self.heartbeat.beat()
            now = time.monotonic()
            for child in self.children:
                self._reap(child, now)
            if os.getpid() == 1:  # a container's init: the pod's orphans come to us
                reap_strays(c.process.pid for c in self.children if c.process is not None)
            self.reload_steps.resend_lost_hups()
            ready = self.ready()[0]
            metrics.READY.set(1 if ready else 0)
            self.commitment_results_kept = self.kept_results.counted(now)
            metrics.COMMITMENT_RESULTS_KEPT.set(self.commitment_results_kept)
            has_run = has_run or ready or time.time() - self.started_at > RELOAD_AFTER_SECONDS
            # A SIGHUP during the start waits until the children heed one.
            if has_run and self.reload_requested.is_set():
                self.reload_requested.clear()
                self.heartbeat.beat(self._reload_allowance())  # a reload is a long turn
                self.reload()

    def _next_turn(self) -> bool:
        """Wait for the main loop's next turn: half a second, or less when a signal comes
        (a SIGHUP is acted on at once, while a child that just restarted may still be
        starting: ReloadSteps.hup sends it again once it reports). True: stop."""
        self.wake.wait(0.5)
        self.wake.clear()
        return self.stopping.is_set()

    def _install_signals(self) -> None:
        # Never an Event's set() or a log call in a handler (process_util.run_on_signal).
        def stop(signum: int) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.stopping.set()
            self.wake.set()

        def reload(signum: int) -> None:  # the main loop reloads
            self.reload_requested.set()
            self.wake.set()

        run_on_signal([signal.SIGTERM, signal.SIGINT], stop)
        run_on_signal([signal.SIGHUP], reload)

    # --- config reload (SIGHUP) -------------------------------------------------------------

    def reload(self) -> None:
        """Validate the config file again and hand it to the children; refuse a bad one whole.

        Every SIGHUP also reloads TLS certificates and keys, whatever happens to the config.
        """
        self._reload_own_tls()
        if self.config_path is None:
            log.info("SIGHUP: reloading TLS material (the built-in default config has no file)")
            self.reload_steps.hup()
            return
        try:
            new = load_config(self.config_path)
            preflight.check_tls(new)
            change = reload_plan(self.config, new)
        except Exception as exc:  # a bug in validation must not stop a running router
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            why = exc if isinstance(exc, RouterError) else f"{type(exc).__name__}: {exc}"
            log.error("config reload refused; the running config stays in force: %s", why)
            self.reload_steps.hup()
            return
        if not change.changed:
            metrics.CONFIG_RELOADS.labels("unchanged").inc()
            log.info("SIGHUP: %s is unchanged; reloading TLS material", self.config_path)
            self.reload_steps.hup()
            return
        self.generation += 1
        save_for_children(new, self.runtime.directory, self.generation)
        preflight.warn_burned_in(new, self.config)
        preflight.warn_shared_completions(new)
        self.config = new
        setup_logging(new.log_level, new.log_format)  # each child applies its own on SIGHUP
        self.seats.reconfigure(new.listen)
        restart_workers = change.pipeline
        for child in self.children:
            child.args = (new, *child.args[1:])  # a later restart starts with the new config
            if child.name.startswith("worker-") and child.without != worker_hidden_modules(new):
                child.without = worker_hidden_modules(new)  # a DICOMweb destination came or went
                restart_workers = True
        # Broker, then workers, then acceptor: no job is routed to a destination the broker
        # and the workers do not know yet.
        self.reload_steps.hup("broker")
        self.reload_steps.await_broker_generation(self.generation)
        if restart_workers:
            # They start with the new config and fresh TLS material.
            self.reload_steps.restart_workers(self._worker_grace())
            self.reload_steps.hup("acceptor")
        else:
            self.reload_steps.hup("worker-", "acceptor")
        metrics.CONFIG_RELOADS.labels("applied").inc()
        metrics.CONFIG_RELOADED_AT.set(time.time())
        log.info("config reloaded from %s; changed: %s", self.config_path,
                 ", ".join(change.changed))
        record_config_change(self.audit, change.changed)

    def _reload_own_tls(self) -> None:
        """The supervisor's own TLS: the console's HTTPS certificate and the audit syslog's
        client certificate (their settings need a restart, their files do not)."""
        if self.console is not None:
            self.console.reload_tls()
        if self.audit is not None:
            self.audit.reload_tls()

    def _reload_allowance(self) -> float:
        """The longest a reload can take: the broker's confirmation, then each worker's stop
        and reconnection (ReloadSteps.restart_workers), plus a turn."""
        workers = sum(c.name.startswith("worker-") for c in self.children)
        each = self._worker_grace() + 5 + WORKER_READY_SECONDS
        return BROKER_CONFIRM_SECONDS + workers * each + STALE_SECONDS

    def _worker_grace(self) -> float:
        """How long a worker replaced by a reload gets to finish what it holds."""
        return self.config.listen.dimse_timeout + 5

    def _stop_children(self) -> None:
        """Acceptor first (no new work), then workers (finish what they hold), broker last."""
        grace = self._stop_grace()
        self.seats.close()
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
