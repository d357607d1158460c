"""When a destination may receive: a daily window in local time, e.g. off-peak 20:00-06:00.

Outside its window a destination's queue is held (nothing is sent, nothing is lost) and
released when the window opens.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta


def parse_clock(text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day (HH:MM)") from None


class TimeWindow:
    def __init__(self, start: time, end: time) -> None:
        self.start, self.end = start, end

    def is_open(self, now: datetime) -> bool:
        t = now.time()
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # across midnight

    def opens_in(self, now: datetime) -> float:
        """Seconds until the window opens (0 while open)."""
        if self.is_open(now):
            return 0.0
        opening = datetime.combine(now.date(), self.start, now.tzinfo)
        if opening <= now:
            opening += timedelta(days=1)
        return (opening - now).total_seconds()

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"
