"""The worker process: takes deliveries from the broker against credits and reports results.

The main thread owns the broker socket; delivery threads report through their own PUSH
sockets to an inproc PULL here. If the broker goes quiet, the worker reconnects with a new
identity and announces itself again (the "paranoid pirate" pattern).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import tempfile
import threading
import time
from types import FrameType

import zmq

from router.audit.forwarded import ForwardTally
from router.audit.trail import AuditTrail
from router.core import reload as reload_config
from router.core.client_tls import CLIENT_CONTEXTS
from router.core.config import RouterConfig
from router.core.errors import ProtocolError, RouterError
from router.core.messages import (
    Deliver,
    Goodbye,
    Heartbeat,
    Ready,
    RelayAck,
    RelayCancel,
    RelayRequest,
    decode,
    encode,
)
from router.core.process_util import (
    SignalWakeup,
    install_stop_handlers,
    setup_logging,
    watch_parent,
)
from router.core.runtime import Runtime
from router.core.spool import Spool
from router.core.zmq_drain import waiting
from router.dicom.store_sender import StorePool
from workers.delivery import DeliveryThread, Reloads
from workers.idle_release import IdleReleaser, release_at_stop
from workers.prepare import SHARED_CODECS
from workers.relay_tasks import CANCEL_GRACE_SECONDS, ActiveRelays, RelayTask

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
BROKER_SILENCE_SECONDS = 5.0
ABORT_WAIT_SECONDS = 2.0  # for aborted upstream associations to end, when stopping


class Worker:
    def __init__(self, config: RouterConfig, runtime: Runtime, index: int) -> None:
        self.config = config
        self.runtime = runtime
        self.index = index
        self.context = zmq.Context()
        self.tasks: queue.Queue[Deliver | None] = queue.Queue()
        self.busy = 0
        self.generation = 0
        self.results = self.context.socket(zmq.PULL)
        self.results.bind(f"inproc://results-{index}")
        spool = Spool(config.spool.path)
        pool = StorePool()  # the threads share associations: reuse before opening
        # Instances sent on, audited per destination and study (docs/audit.md).
        self.audit = AuditTrail(config.audit, config.ae_title) if config.audit.enabled \
            else None
        self.forwarded = ForwardTally(config) if self.audit is not None else None
        self.pool = pool
        self.idle_release = IdleReleaser(pool)
        self.threads = [
            DeliveryThread(config, spool, self.tasks, self.context, f"inproc://results-{index}",
                           i, pool, self.forwarded)
            for i in range(config.worker_threads)
        ]
        # Relayed requests (queries, retrieves, N-services) on threads of their own, so that a
        # long C-MOVE never holds up deliveries; their answers come back on relay_out.
        self.relay_tasks: queue.Queue[RelayTask | None] = queue.Queue()
        self.relays = ActiveRelays()
        self.relay_out = self.context.socket(zmq.PULL)
        self.relay_out.bind(f"inproc://relay-out-{index}")
        self.spool = spool
        self.relay_threads: list[threading.Thread] = []  # started with the first request
        self.broker = self._connect()

    def _connect(self) -> zmq.Socket[bytes]:
        self.generation += 1
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, f"w{self.index}-{os.getpid()}-{self.generation}".encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.runtime.backend)
        sock.send(encode(Ready(credits=len(self.threads) - self.busy)))
        self.last_heard = time.monotonic()
        return sock

    def _reconnect(self, why: str) -> None:
        log.warning("%s; reconnecting to the broker", why)
        self.broker.close()
        self.broker = self._connect()
        # A relayed request's route lived in the broker under the old identity: nothing
        # this worker sends for it can reach its requester any more (who gets a failure:
        # worker_gone, or the acceptor's probe), and a C-GET would wait for acks forever.
        in_progress = self.relays.all()
        if in_progress:
            log.warning("cancelling %d relayed request(s) in progress upstream: the "
                        "router answers their requesters with a failure", len(in_progress))
        for task in in_progress:
            task.cancel()

    def _on_broker(self) -> None:
        for frame, *payload in waiting(self.broker):
            self.last_heard = time.monotonic()
            try:
                message = decode(frame)
            except ProtocolError as exc:
                log.error("ignored a bad message from the broker: %s", exc)
                continue
            if isinstance(message, RelayRequest):
                self._start_relays()
                queued = RelayTask(message, payload[0] if payload else None)
                self.relays.add(queued)  # from now on a cancel finds it (relay_tasks.py)
                self.relay_tasks.put(queued)
            elif isinstance(message, RelayCancel | RelayAck):
                task = self.relays.get(message.request_id)
                if task is not None and isinstance(message, RelayCancel):
                    task.cancel()
                elif task is not None:
                    task.window.release()
            elif isinstance(message, Deliver):
                self.busy += 1
                self.tasks.put(message)
            elif isinstance(message, Goodbye):
                self._reconnect("the broker does not know this worker")
                return  # the generator's socket is closed: read no further
            elif not isinstance(message, Heartbeat):
                log.error("ignored an unexpected %s from the broker", message.kind)

    def _on_results(self) -> None:
        for frames in waiting(self.results):
            self.busy -= 1
            self.broker.send_multipart(frames)

    def _start_relays(self) -> None:
        """The relay threads, and pynetdicom with them, at the first relayed request."""
        if self.relay_threads:
            return
        from router.dicom.net import configure_pynetdicom
        from workers.relay import RelayThread

        # Chunked receive: C-GET sub-operations from an upstream land as files on the spool.
        configure_pynetdicom(chunked_send=True, chunked_receive=True)
        self.relay_threads = [
            RelayThread(self.config, self.spool, self.relay_tasks, self.context,
                        f"inproc://relay-out-{self.index}", self.relays, i)
            for i in range(self.config.worker_threads)
        ]
        for relay in self.relay_threads:
            relay.start()

    def _on_relay_out(self) -> None:
        for frames in waiting(self.relay_out):
            self.broker.send_multipart(frames)

    def run(self, stop: threading.Event, wakeup: SignalWakeup | None = None) -> None:
        for thread in self.threads:
            thread.start()
        self.idle_release.start()
        poller = zmq.Poller()
        poller.register(self.results, zmq.POLLIN)
        poller.register(self.relay_out, zmq.POLLIN)
        if wakeup is not None:
            poller.register(wakeup, zmq.POLLIN)
        next_heartbeat = 0.0
        reloads_seen = Reloads.generation
        while not stop.is_set():
            poller.register(self.broker, zmq.POLLIN)
            ready = dict(poller.poll(int(HEARTBEAT_SECONDS * 1000)))
            if wakeup is not None:
                wakeup.drain_if_ready(ready)
            if Reloads.generation != reloads_seen:
                reloads_seen = Reloads.generation
                self._apply_logging()
                log.info("SIGHUP: destinations reconnect with reloaded TLS certificates")
            if self.results in ready:
                self._on_results()
            if self.relay_out in ready:
                self._on_relay_out()
            if self.broker in ready:
                self._on_broker()
            now = time.monotonic()
            self.relays.abort_overdue(now)
            if now >= next_heartbeat:
                next_heartbeat = now + HEARTBEAT_SECONDS
                self.broker.send(encode(Heartbeat()))
                self._flush_audit(now)
            if now - self.last_heard > BROKER_SILENCE_SECONDS:
                poller.unregister(self.broker)
                self._reconnect("no word from the broker")
        self.shutdown()

    def shutdown(self) -> None:
        """Finish deliveries in progress, report them, and hand back the rest. Relayed
        requests are the requesters' to repeat: cancelled upstream at once, each requester
        answered with a failure (by its relay thread, or by the broker on Goodbye)."""
        relays = self.relays.all()
        if relays:
            log.warning("stopping: cancelling %d relayed request(s) upstream; their "
                        "requesters get a failure to retry", len(relays))
        for task in relays:
            task.stop()
        self.idle_release.stop()
        for _ in self.threads:
            self.tasks.put(None)
        for _ in self.relay_threads:
            self.relay_tasks.put(None)
        # dimse_timeout for all threads together, not each: joined one by one, N threads
        # stuck on silent destinations took N times as long, past the supervisor's grace.
        deadline = time.monotonic() + self.config.listen.dimse_timeout
        for thread in self.threads:
            # In slices, with heartbeats and the results so far: past the broker's lease a
            # worker still finishing its deliveries was taken for dead, its deliveries
            # requeued beside it ("missed its heartbeats").
            while thread.is_alive() and (left := deadline - time.monotonic()) > 0:
                thread.join(timeout=min(left, HEARTBEAT_SECONDS))
                self._on_results()
                self.broker.send(encode(Heartbeat()))
        release_at_stop(self.pool.take_all_idle())
        self._join_relays(time.monotonic() + CANCEL_GRACE_SECONDS)
        self.relays.abort_overdue(time.monotonic(), grace=0.0)
        self._join_relays(time.monotonic() + ABORT_WAIT_SECONDS)
        SHARED_CODECS.close()
        self._on_results()
        self._on_relay_out()
        self._flush_audit(None)
        if self.audit is not None:
            self.audit.close()
        self.broker.send(encode(Goodbye()))
        self.broker.close()
        self.results.close()
        self.relay_out.close()
        # destroy, not term: a socket some thread failed to close must not hang the stop.
        self.context.destroy(linger=0)


    def _flush_audit(self, now: float | None) -> None:
        """What the destinations took, once due (monotonic `now`), or all of it (None)."""
        if self.forwarded is None or self.audit is None:
            return
        if now is None or self.forwarded.due(now):
            self.forwarded.flush(self.audit)

    def _apply_logging(self) -> None:
        """log_level and log_format apply in place: the supervisor restarts workers only for
        what their pools and transforms are built from (router/core/reload.py)."""
        try:
            loaded = reload_config.load(self.runtime.directory)
        except (OSError, RouterError, KeyError, ValueError) as exc:
            log.error("cannot read the reloaded config; keeping the current logging: %s", exc)
            return
        if loaded is not None:
            setup_logging(loaded[1].log_level, loaded[1].log_format)

    def _join_relays(self, deadline: float) -> None:
        for relay in self.relay_threads:
            relay.join(timeout=max(0.0, deadline - time.monotonic()))


def _leave_despite_stuck_threads() -> None:
    """pynetdicom's DUL threads are not daemons: one stuck on a peer that never closes
    would keep the stopped process alive (and a reload waiting for it). The process ends
    anyway, after a bounded wait."""
    deadline = time.monotonic() + ABORT_WAIT_SECONDS
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if stuck:
        log.warning("stopped with thread(s) still waiting on a peer (%s): exiting anyway",
                    ", ".join(stuck))
        logging.shutdown()
        os._exit(0)


def _reload(signum: int, frame: FrameType | None) -> None:
    CLIENT_CONTEXTS.request_reload()  # first: a rebuilt destination then gets new material
    Reloads.generation += 1  # no lock, no log call in a handler (process_util.set_on_signal)


def main(config: RouterConfig, runtime: Runtime, index: int) -> None:
    """Entry point of a spawned worker process."""
    setup_logging(config.log_level, config.log_format)
    stop = threading.Event()
    install_stop_handlers(stop)
    wakeup = SignalWakeup()
    watch_parent(stop)
    tempfile.tempdir = str(Spool(config.spool.path).create().incoming)
    signal.signal(signal.SIGHUP, _reload)
    worker = Worker(config, runtime, index)
    log.info("worker %d ready with %d delivery threads", index, len(worker.threads))
    worker.run(stop, wakeup)
    _leave_despite_stuck_threads()
