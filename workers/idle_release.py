"""Releases the worker's pooled associations that idled past their `idle_timeout`, on a
thread of its own.

A release waits up to the destination's `acse_timeout` (30 s) for the A-RELEASE-RP. Behind
a firewall or NAT box that dropped the idle flow, or a link that went dead, no answer ever
comes: done by a delivery thread after its task, that wait held the thread for the whole
timeout (per association, one after another) while the broker, which had its result, sent
it the next delivery. Here it holds nobody's delivery, and each association is released on
a thread of its own, so that it holds no other release either.
"""

from __future__ import annotations

import threading
import time

from router.dicom.association_pool import A
from router.dicom.store_sender import StorePool

INTERVAL_SECONDS = 0.5  # how often idle associations are looked at
# A stopping worker's wait for its idle associations' A-RELEASE-RPs: a live peer answers in
# milliseconds; the process's exit closes the sockets of those that did not.
STOP_RELEASE_SECONDS = 2.0


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
                # Each on a thread of its own: one after another, a release to a silent
                # peer held every other one for its acse_timeout.
                _start_releases(self.pool.take_expired(time.monotonic()))

    def stop(self) -> None:
        """The stopping worker releases what is left idle (release_at_stop)."""
        self.stopped.set()
        self.pool.retired.set()


def release_at_stop(associations: list[A], seconds: float = STOP_RELEASE_SECONDS) -> None:
    """A stopping worker's idle associations, released all at once, each on a thread of its
    own, for `seconds` at most. One by one on a delivery thread as it ended, a release to a
    black-holed peer made the stop wait that peer's whole acse_timeout: a reload restarting
    the workers took that long per worker, and with `workers: 1` nothing was delivered
    meanwhile."""
    threads = _start_releases(associations)
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _start_releases(associations: list[A]) -> list[threading.Thread]:
    """A thread per established association, releasing it (each ends by the destination's
    acse_timeout at the latest)."""
    threads = [threading.Thread(target=assoc.release, name="idle-release-one", daemon=True)
               for assoc in associations if assoc.is_established]
    for thread in threads:
        thread.start()
    return threads
