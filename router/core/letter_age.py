"""A dead letter's age that a step of the system clock does not move.

`failed_at` is wall-clock time: after a step back it lies in the future, after a step
forward it looks too old. Beside it a writer stores this boot's id and CLOCK_BOOTTIME
seconds (counts suspend too, never steps): within the same boot the age comes from those;
a letter from an earlier boot, or one written before they were stored, falls back to
`failed_at`, never below zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from router.core.process_identity import boot_id


def boot_seconds() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True)
class Age:
    seconds: float  # never negative
    stepped_back: bool = False  # its wall-clock time lies ahead: the clock stepped back since


@dataclass(frozen=True, slots=True)
class Moment:
    """One reading of the three clocks: when a letter is written, or `now` for its age."""

    wall: float
    boot: float
    boot_id: str | None

    @classmethod
    def read(cls) -> Moment:
        return cls(time.time(), boot_seconds(), boot_id())

    def stamp(self) -> dict[str, Any]:
        """The fields of a dead letter's record that say when it was written."""
        return {"failed_at": self.wall, "boot_id": self.boot_id, "boot_seconds": self.boot}

    @classmethod
    def of_record(cls, body: dict[str, Any], wall: float) -> Moment:
        """From a record's fields: without a boot id or boot seconds, the wall time only."""
        boot, boot_seconds_ = body.get("boot_id"), body.get("boot_seconds")
        if not isinstance(boot, str) or not isinstance(boot_seconds_, int | float) \
                or isinstance(boot_seconds_, bool):
            return cls(wall, 0.0, None)
        return cls(wall, float(boot_seconds_), boot)

    def age_at(self, now: Moment) -> Age:
        if self.boot_id is not None and self.boot_id == now.boot_id:
            return Age(max(0.0, now.boot - self.boot))
        seconds = now.wall - self.wall
        return Age(max(0.0, seconds), stepped_back=seconds < 0)
