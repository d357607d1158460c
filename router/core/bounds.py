"""Bounded counts for the config: every integer setting has a documented ceiling that no real
site reaches, so that a typo (`max_parallel: 100000000`) is refused at load, naming the key and
the allowed range, instead of preallocating shared memory, starting threads or overflowing at
use (2.0 ** attempts past 1024 raised OverflowError in the broker's backoff)."""

from __future__ import annotations

from pydantic import AfterValidator

KIB = 1024
GIB = 1024**3
TIB = 1024**4
PIB = 1024**5


def between(low: int, high: int) -> AfterValidator:
    """A validator that refuses an integer outside [low, high], saying the range."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, not {value}")
        return value

    return AfterValidator(check)
