"""A relayed request as the worker's threads share it, and the table of those in progress.

Apart from workers/relay.py so that a worker imports pynetdicom and pydicom only when its
first relayed request arrives (workers/main.py): most routers relay nothing, and the two
cost about 20 MB in every worker.

A task is in the table from the moment the worker queues it, not only once a relay thread
takes it: a C-CANCEL (the requester's, the acceptor's at request_timeout, the broker's when
the acceptor died) that arrives while it waits for a thread is applied to it, and the thread
that takes it answers 0xFE00 without asking the upstream. Every cancel is bounded: a task
whose upstream has not ended within CANCEL_GRACE_SECONDS of its C-CANCEL has its upstream
association aborted (`ActiveRelays.abort_overdue`, from the worker's main loop). A C-CANCEL
that comes after the upstream association opened and before the request went out follows
the request as soon as it is on the wire (`request_went`): sent before it, the upstream would
ignore it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from router.core.messages import RelayRequest

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association

    from router.dicom.silence_wait import SilenceWait

log = logging.getLogger("workers.relay")

RELAY_WINDOW = 4  # C-GET instances handed to the acceptor and not yet passed on
# How long an upstream may take to end a request after its C-CANCEL before the worker
# aborts the association: an upstream that ignores C-CANCEL never holds a relay thread.
CANCEL_GRACE_SECONDS = 5.0


@dataclass
class RelayTask:
    request: RelayRequest
    dataset: bytes | None
    cancelled: threading.Event = field(default_factory=threading.Event)
    window: threading.Semaphore = field(
        default_factory=lambda: threading.Semaphore(RELAY_WINDOW))
    assoc: Association | None = None
    stores: int = 0
    response: Dataset | None = None  # N-services: the command set of the upstream's response
    stopped: bool = False  # the worker is stopping: a failure for the requester, not 0xFE00
    cancelled_at: float | None = None  # monotonic time of the first cancel
    aborting: bool = False
    request_sent: bool = False  # the request is on the wire to the upstream
    silence: SilenceWait | None = None  # C-FIND, C-GET, C-MOVE: the wait for the upstream
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        """From the worker's main thread: C-CANCEL travels upstream while the relay waits
        (once the request went: `request_went` sends it otherwise)."""
        with self._lock:
            if self.cancelled_at is None:
                self.cancelled_at = time.monotonic()
            self.cancelled.set()
            assoc = self.assoc if self.request_sent else None
        self._send_cancel(assoc)
        self.window.release()  # a relay thread waiting for the acceptor's ack stops waiting

    def request_went(self) -> None:
        """From the association's own thread, once the request is on the wire: a cancel that
        came before it goes upstream now, after the request."""
        with self._lock:
            if self.request_sent:
                return
            self.request_sent = True
            assoc = self.assoc if self.cancelled.is_set() else None
        self._send_cancel(assoc)

    def _send_cancel(self, assoc: Association | None) -> None:
        if assoc is None or self.request.command not in ("C-FIND", "C-GET", "C-MOVE"):
            return
        try:
            assoc.send_c_cancel(self._message_id, query_model=self.request.sop_class_uid)
        except Exception as exc:  # the association may have ended just now
            log.debug("C-CANCEL not sent upstream: %s", exc)

    def stop(self) -> None:
        """The worker is stopping (SIGTERM, a reload): cancel, and fail the requester."""
        self.stopped = True
        self.cancel()

    def abort(self) -> None:
        """Abort the upstream association, once, on a thread of its own: pynetdicom's abort
        waits for its DUL thread, and no caller here may wait on an upstream."""
        assoc = self.assoc
        if assoc is None or self.aborting:
            return
        self.aborting = True
        log.warning("relayed %s: the upstream did not end it within %.0fs of its C-CANCEL; "
                    "aborting the association", self.request.command, CANCEL_GRACE_SECONDS)
        threading.Thread(target=_abort_quietly, args=(assoc,), name="relay-abort",
                         daemon=True).start()

    @property
    def _message_id(self) -> int:
        return self.request.move_message_id or 1


def _abort_quietly(assoc: Association) -> None:
    from router.dicom.net import abort_waking_waiter  # pynetdicom is loaded by now

    try:
        abort_waking_waiter(assoc)  # the relay thread's wait for an answer ends at once
    except Exception as exc:  # ended meanwhile
        log.debug("upstream abort: %s", exc)


class ActiveRelays:
    """Request id -> task (queued or running), for cancels and acks from the main thread."""

    def __init__(self) -> None:
        self._tasks: dict[str, RelayTask] = {}
        self._lock = threading.Lock()

    def add(self, task: RelayTask) -> None:
        with self._lock:
            self._tasks[task.request.request_id] = task

    def remove(self, task: RelayTask) -> None:
        with self._lock:
            self._tasks.pop(task.request.request_id, None)

    def get(self, request_id: str) -> RelayTask | None:
        with self._lock:
            return self._tasks.get(request_id)

    def all(self) -> list[RelayTask]:
        with self._lock:
            return list(self._tasks.values())

    def abort_overdue(self, now: float, grace: float = CANCEL_GRACE_SECONDS) -> None:
        """Abort the upstream of every task cancelled more than `grace` ago and still on."""
        for task in self.all():
            if task.cancelled_at is not None and now - task.cancelled_at >= grace:
                task.abort()
