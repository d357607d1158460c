"""Event-driven loops for pynetdicom's association and DUL threads.

pynetdicom 3.0 runs two polling threads per association: the DUL loop sleeps 1 ms whenever
it finds nothing to do, and the association loop sleeps 1 ms on every turn. With several
associations open, those wake-ups are most of the router's CPU (py-spy: the two sleep lines
held over half of the acceptor's and the workers' samples) and add up to a few ms of
latency per message. Here both loops wait for work instead:

- every queue the two threads read from wakes them when something is put on it (a
  `Waker` per association: an Event for the association thread, a pipe for the DUL);
- the DUL thread waits in select() on its socket and that pipe, so data from the peer and
  primitives from the association thread both wake it at once;
- both still wake every POLL_SECONDS to check their timers (ARTIM, network idle), which
  nothing signals.

The loops are pynetdicom's own, statement for statement, with the sleeps replaced: same
state machine, same pause protocol (`_reactor_checkpoint`/`_is_paused`) with the service
calls. They are installed on the classes (pynetdicom offers no hook for its loops), only
for the pynetdicom versions they were written against; any other version keeps its own
loops, with a warning. `reactors.installed()` says which is in use.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA

from router.dicom import compat

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # timers (ARTIM, network idle) are checked at least this often
PDATA_QUEUED_BYTES = 2 * 1024 * 1024  # P-DATA queued for sending per association, at most
_installed = False


class Waker:
    """Wakes an association's two threads: an Event for one, a socket pair for select() in
    the other. Socket objects, not raw fds: a wake after close fails harmlessly instead of
    writing into whatever reused the descriptor, and a Waker never used is closed by GC."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        self.event.set()
        with contextlib.suppress(OSError):  # buffer full (a wake is pending anyway) or closed
            self._writer.send(b"\0")

    def wait_for_socket(self, sock: Any, timeout: float) -> None:
        """Until the socket has data, something was queued, or `timeout` passed."""
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes already buffered: select() cannot see them
        watched = [self._reader] if sock is None else [sock, self._reader]
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except (OSError, ValueError):
            return  # the socket was closed under us: the loop's own checks notice
        if self._reader in ready:
            with contextlib.suppress(OSError):
                while self._reader.recv(4096):
                    pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class WakingQueue(queue.Queue[Any]):
    """A queue that wakes its association's threads on every put.

    With `pdata_limit` (bytes), a P-DATA put waits while that much is queued and the DUL
    still runs: pynetdicom encodes a whole message into the queue faster than the DUL sends
    it, so a chunked send of a 50 MB file otherwise sits in memory whole, once per
    association. Other primitives (an A-ABORT) never wait.
    """

    def __init__(self, waker: Waker, pdata_limit: int = 0,
                 consumer_alive: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self.waker = waker
        self.pdata_limit = pdata_limit
        self.consumer_alive = consumer_alive
        self.pdata_bytes = 0  # guarded by the queue's own mutex (_put/_get run under it)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if self.pdata_limit and isinstance(item, P_DATA):
            self._wait_for_room()
        super().put(item, block, timeout)
        self.waker.wake()

    def _wait_for_room(self) -> None:
        with self.not_full:  # Queue.get() notifies it after every item taken
            while self.pdata_bytes >= self.pdata_limit and (
                self.consumer_alive is None or self.consumer_alive()
            ):
                self.not_full.wait(0.1)

    def _put(self, item: Any) -> None:
        self.pdata_bytes += _pdata_size(item)
        super()._put(item)

    def _get(self) -> Any:
        item = super()._get()
        self.pdata_bytes -= _pdata_size(item)
        return item


def _pdata_size(item: Any) -> int:
    if not isinstance(item, P_DATA):
        return 0
    return sum(len(data) for _, data in item.presentation_data_value_list)


def _waker(assoc: Association) -> Waker:
    waker: Waker = assoc._router_waker  # type: ignore[attr-defined]
    return waker


def _association_init(original: Callable[..., None]) -> Callable[..., None]:
    def init(self: Association, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        waker = Waker()
        self._router_waker = waker  # type: ignore[attr-defined]
        # Empty at this point: swapping them loses nothing.
        dul = self.dul
        self.dul.to_provider_queue = WakingQueue(
            waker, pdata_limit=PDATA_QUEUED_BYTES,
            consumer_alive=lambda: dul.is_alive() and not dul._kill_thread)
        self.dul.to_user_queue = WakingQueue(waker)
        self.dul.event_queue = WakingQueue(waker)
        self.dimse.msg_queue = WakingQueue(waker)

    return init


def _association_kill(original: Callable[[Association], None]) -> Callable[[Association], None]:
    def kill(self: Association) -> None:
        waker = getattr(self, "_router_waker", None)
        if waker is not None:
            waker.wake()
        original(self)

    return kill


def _dul_kill_flag() -> property:
    """`_kill_thread` as a property, so that stopping the DUL wakes it at once."""

    def get(self: DULServiceProvider) -> bool:
        return bool(self.__dict__.get("_router_kill", False))

    def set_(self: DULServiceProvider, value: bool) -> None:
        self.__dict__["_router_kill"] = value
        if value:
            waker = getattr(getattr(self, "assoc", None), "_router_waker", None)
            if waker is not None:
                waker.wake()

    return property(get, set_)


def _association_run_reactor(self: Association) -> None:
    """pynetdicom's Association._run_reactor, waiting for work instead of sleeping 1 ms."""
    waker = _waker(self)
    self._is_paused = False
    while not self._kill:
        # Waiting counts as paused: a service call (send_c_store, ...) may take over the
        # queues meanwhile, and the checkpoint below holds this loop until it is done.
        self._is_paused = True
        waker.event.wait(POLL_SECONDS)
        waker.event.clear()
        _leave_pause(self)
        if self._kill:
            return

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            waker.event.set()  # another message may be queued behind it
            self._serve_request(msg, context_id)  # type: ignore[arg-type]

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for subscribers
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            log.warning("network timeout reached on the association with %s",
                        self.requestor.ae_title if self.is_acceptor else self.acceptor.ae_title)
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def _leave_pause(assoc: Association) -> None:
    """Resume only while no service call holds the queues.

    A service call clears the checkpoint and then waits for `_is_paused`; this side clears
    `_is_paused` and then checks the checkpoint. Each writes before it reads the other's
    flag, so at least one of them sees the other and backs off (pynetdicom's own loop reads
    no flag after resuming: a call starting in that instant could lose its response to it,
    which wake-ups on every put made likely enough to see).
    """
    while True:
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        if assoc._reactor_checkpoint.is_set():
            return
        assoc._is_paused = True  # a service call started meanwhile: let it finish


def _dul_run_reactor(self: DULServiceProvider) -> None:
    """pynetdicom's DULServiceProvider.run_reactor, waiting in select() instead of sleeping."""
    waker = _waker(self.assoc)
    self._idle_timer.start()
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                log.exception("error in the DUL loop; aborting the association")
                _abort_now(self)
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sock = self.socket.socket if self.socket is not None else None
                waker.wait_for_socket(sock, POLL_SECONDS)
                continue
            self.state_machine.do_action(event)
    finally:
        waker.wake()  # the association loop notices a dead DUL at once
        waker.close()


def _abort_now(dul: DULServiceProvider) -> None:
    """As pynetdicom does: bypass the state machine, send an A-ABORT and stop both loops."""
    abort_pdu = A_ABORT_RQ()
    abort_pdu.source = 0x02
    abort_pdu.reason_diagnostic = 0x00
    if dul.socket is not None:
        dul.socket.send(abort_pdu.encode())
    dul.assoc.is_aborted = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    dul._kill_thread = True


def install() -> bool:
    """Replace the two loops in this process (idempotent). False if the version is unknown."""
    global _installed
    if _installed:
        return True
    if not compat.is_supported():
        log.warning("pynetdicom %s: keeping its polling loops (the event-driven ones were "
                    "written for %s)", pynetdicom.__version__,
                    ", ".join(compat.SUPPORTED_VERSIONS))
        return False
    Association.__init__ = _association_init(Association.__init__)  # type: ignore[method-assign]
    Association.kill = _association_kill(Association.kill)  # type: ignore[method-assign,assignment]
    Association._run_reactor = _association_run_reactor  # type: ignore[method-assign]
    DULServiceProvider._kill_thread = _dul_kill_flag()  # type: ignore[assignment]
    DULServiceProvider.run_reactor = _dul_run_reactor  # type: ignore[method-assign]
    _installed = True
    return True


def installed() -> bool:
    return _installed
