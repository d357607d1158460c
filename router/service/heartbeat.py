"""The supervisor's heartbeat behind /healthz: its main loop refreshes it every turn, so a
loop that stopped turning (an exception, a hang) turns /healthz 503 instead of a process that
answers "ok" for ever without supervising anything."""

from __future__ import annotations

import threading
import time

# The main loop turns every 0.5 s: ten missed turns is no longer a slow turn.
STALE_SECONDS = 5.0


class Heartbeat:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # beaten by the main loop, read by the HTTP threads
        self._due = time.monotonic() + STALE_SECONDS

    def beat(self, allow: float = STALE_SECONDS) -> None:
        """Alive for `allow` more seconds: a longer step (a reload, the stop) says so."""
        with self._lock:
            self._due = time.monotonic() + allow

    def alive(self) -> tuple[bool, str]:
        with self._lock:
            late = time.monotonic() - self._due
        if late <= 0:
            return True, "ok"
        return False, (f"the supervisor's main loop has not turned for "
                       f"{late + STALE_SECONDS:.0f}s (hung or stopped)")
