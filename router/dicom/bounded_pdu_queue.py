"""Backpressure for `send`: at most QUEUED_PDUS P-DATA PDUs wait for the socket.

pynetdicom's association thread cuts a C-STORE into PDUs and puts each on its DUL's
`to_provider_queue`, which the DUL thread empties onto the socket. That queue has no bound:
a file read faster than the link takes it piled up there, so `send` held what the peer had
not taken yet (a 500 MB instance over a 50 MB/s link: 470-570 MB of RSS, where storescu
took 16 MB; a 4 GB one, gigabytes). Here the association thread waits for room instead.
Only P-DATA waits: an A-ABORT or A-RELEASE always goes in, and once the DUL thread has
stopped (the association ended) nothing waits for it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA

QUEUED_PDUS = 16  # with 256 KiB PDUs, 4 MiB in flight at most
_WAIT = 0.5  # seconds between looks at whether the DUL thread still runs


class PduQueue(queue.Queue[Any]):
    """A DUL's to_provider_queue that holds at most `limit` P-DATA primitives."""

    def __init__(self, dul: threading.Thread, limit: int = QUEUED_PDUS) -> None:
        super().__init__()
        self._dul = dul
        self._room = threading.Semaphore(limit)
        self._over = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, P_DATA):
            while not self._room.acquire(timeout=0 if self._over else _WAIT):
                if not self._dul.is_alive():
                    # The association is over: no one will send it, nor the rest of the
                    # message, which pynetdicom still cuts; each goes at once.
                    self._over = True
                    return
        super().put(item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        if isinstance(item, P_DATA):
            self._room.release()
        return item


def bound_sends(assoc: Association) -> None:
    """Make the established association's sends wait for its socket (call before any)."""
    assoc.dul.to_provider_queue = PduQueue(assoc.dul)
