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



def not_finite(value: object) -> str | None:
    """What to say of YAML's `.nan` or `.inf` given for a number (None for anything else):
    pydantic's own words for them ("greater than 0", "less than or equal to 1") mislead, as
    a NaN fails every comparison."""
    if not isinstance(value, float) or math.isfinite(value):
        return None
    if math.isnan(value):
        return "is .nan (not a number): give a finite number"
    return f"must be a finite number, not {'-' if value < 0 else ''}.inf"

# The default bound of a timeout or delay: past a day, something else is wrong.
Seconds = Annotated[float, at_most(DAY, "seconds", "1 day")]
