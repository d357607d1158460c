"""The console's login rate limit: failed logins by address within `login_window`, at most
`login_failures` of them, in a table of bounded size.

The table was pruned only by a successful login from the same address, so a spray of failed
logins from many addresses grew it without bound. Now every failure first drops the records
whose failures have all left the window, and past MAX_ADDRESSES the addresses whose last
failure is oldest leave first (an address so evicted starts again from zero: a limit per
address cannot stop a sender with that many addresses anyway)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

MAX_ADDRESSES = 10_000


class TooManyFailures(Exception):
    """Logins from this address are refused until its failures leave the window."""


class LoginFailures:
    """Failure times by address, in the order of each address's last failure (oldest first),
    so that expired records and the ones to evict are at the front (a success that takes
    back an address's last stamp leaves it a little late in that order, which costs nothing
    but its record's staying until the cap or its next failure drops it)."""

    def __init__(self, limit: int, window: float, max_addresses: int = MAX_ADDRESSES) -> None:
        self.limit, self.window, self.max_addresses = limit, window, max_addresses
        self._table: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, address: object) -> bool:
        with self._lock:
            return address in self._table

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        recent = self._table.get(address)
        while recent and now - recent[0] > self.window:
            recent.popleft()
        return recent

    def _drop_expired(self, now: float) -> None:
        while self._table:
            oldest = next(iter(self._table))
            if self._recent(oldest, now):
                return  # its last failure is in the window, and every later address's too
            del self._table[oldest]

    def blocked(self, address: str, now: float | None = None) -> bool:
        """Too many failed logins from this address lately."""
        with self._lock:
            recent = self._recent(address, time.monotonic() if now is None else now)
            return recent is not None and len(recent) >= self.limit

    def count(self, address: str, now: float | None = None) -> float:
        """Counts a failure now (taken back with `forgive` if the login succeeds); its stamp.
        TooManyFailures when the address is past its limit (nothing is counted then)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._drop_expired(now)
            recent = self._recent(address, now)
            if recent is not None and len(recent) >= self.limit:
                raise TooManyFailures(address)
            self._table.setdefault(address, deque()).append(now)
            self._table.move_to_end(address)
            while len(self._table) > self.max_addresses:
                self._table.popitem(last=False)
        return now

    def forgive(self, address: str, stamp: float) -> None:
        """A login that succeeded is not a failure: take its stamp back."""
        with self._lock:
            recent = self._table.get(address)
            if recent is not None and stamp in recent:  # expired or evicted meanwhile
                recent.remove(stamp)
            if recent is not None and not recent:
                del self._table[address]
