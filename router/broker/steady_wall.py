"""The broker's steady wall clock: what time.time() said at its start, run on by
CLOCK_MONOTONIC, so it never steps when the system clock does (an NTP step after a VM
resumes, a clock set wrong at boot and corrected).

A job's `received_at` is the acceptor's time.time() at reception (on the spool, so a restart
knows how old each job is). The broker turns it into this clock once, when the job reaches
it (`arrival`), and measures waits against this clock from then on: held against the system
clock, a series waiting 30 s for completion waited two hours more when the clock stepped
back two hours, and went at once, unfinished, when it stepped forward.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyWall:
    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._offset = wall() - monotonic()

    def __call__(self) -> float:
        return self._monotonic() + self._offset


def arrival(received_at: float, wall_now: float, steady_now: float) -> float:
    """When a job received at `received_at` (system clock) arrived, on the steady clock: as
    old as the system clock says, and never in the future (stamped before the clock stepped
    back, its true age is unknown: counted as just arrived, so it waits its hold once more
    at most, never the step)."""
    return steady_now - max(0.0, wall_now - received_at)
