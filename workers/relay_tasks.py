"""A relayed request as the worker's threads share it, and the table of those in progress.

Apart from workers/relay.py so that a worker imports pynetdicom and pydicom only when its
first relayed request arrives (workers/main.py): most routers relay nothing, and the two
cost about 20 MB in every worker.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from router.core.messages import RelayRequest

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association

log = logging.getLogger("workers.relay")

RELAY_WINDOW = 4  # C-GET instances handed to the acceptor and not yet passed on


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

    def cancel(self) -> None:
        """From the worker's main thread: C-CANCEL travels upstream while the relay waits."""
        self.cancelled.set()
        assoc = self.assoc
        if assoc is not None and self.request.command in ("C-FIND", "C-GET", "C-MOVE"):
            try:
                assoc.send_c_cancel(self._message_id, query_model=self.request.sop_class_uid)
            except Exception as exc:  # the association may have ended just now
                log.debug("C-CANCEL not sent upstream: %s", exc)
        self.window.release()  # a relay thread waiting for the acceptor's ack stops waiting

    @property
    def _message_id(self) -> int:
        return self.request.move_message_id or 1


class ActiveRelays:
    """Request id -> task, for cancels and acks from the main thread."""

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
