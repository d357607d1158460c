"""Bounded durations for the config: every timeout, delay and window is a finite number with
a documented maximum. `.inf` or 1e308 passed validation before and then broke at use:
socket.settimeout and the supervisor's drain deadline raised OverflowError."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator

MINUTE = 60.0
DAY = 86_400.0


def at_most(limit: float, unit: str, spoken: str) -> AfterValidator:
    """A validator that refuses inf, nan and anything past `limit` (`spoken` says it in words)."""

    def check(value: float) -> float:
        if not math.isfinite(value) or value > limit:
            raise ValueError(f"must be at most {limit:.0f} {unit} ({spoken}), not {value!r}")
        return value

    return AfterValidator(check)


# The default bound of a timeout or delay: past a day, something else is wrong.
Seconds = Annotated[float, at_most(DAY, "seconds", "1 day")]
