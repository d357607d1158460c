"""Releases the worker's pooled associations that idled past their `idle_timeout`, on a
thread of its own.

A release waits up to the destination's `acse_timeout` (30 s) for the A-RELEASE-RP. Behind
a firewall or NAT box that dropped the idle flow, or a link that went dead, no answer ever
comes: done by a delivery thread after its task, that wait held the thread for the whole
timeout (per association, one after another) while the broker, which had its result, sent
it the next delivery. Here it holds nobody's delivery.
"""

from __future__ import annotations

import threading
import time

from router.dicom.association_pool import release_all
from router.dicom.store_sender import StorePool

INTERVAL_SECONDS = 0.5  # how often idle associations are looked at


class IdleReleaser(threading.Thread):
    def __init__(self, pool: StorePool, interval: float = INTERVAL_SECONDS) -> None:
        super().__init__(name="idle-release", daemon=True)
        self.pool = pool
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        # Woken at once by a reload's retired associations: one to a destination that serves
        # one association at a time keeps it from answering the next one until released.
        while not self.stopped.is_set():
            self.pool.retired.wait(self.interval)
            self.pool.retired.clear()
            if not self.stopped.is_set():
                release_all(self.pool.take_expired(time.monotonic()))

    def stop(self) -> None:
        """The delivery threads release what is left idle when they end."""
        self.stopped.set()
        self.pool.retired.set()
