"""The associations one worker process holds open, shared by its delivery threads.

A delivery takes an idle association to its destination (one that accepts the instance's SOP
class and transfer syntax) before a new one is opened, so a destination that serves one
association at a time is not asked for a second while the first one idles. An association
nobody used for the destination's `idle_timeout` is released, so that the destination is
free for the next association (the router's or another sender's). The broker keeps the
matching account (router/broker/concurrency.py) and sends a destination's deliveries to the worker
that holds its idle associations.

An association is used by one thread at a time: taken out of the pool, given back after.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


class Association(Protocol):
    """What the pool needs of an association (router/dicom/store_client.py has it)."""

    @property
    def is_established(self) -> bool: ...

    def release(self) -> None: ...


A = TypeVar("A", bound=Association)


@dataclass
class _Idle(Generic[A]):
    assoc: A
    since: float
    idle_timeout: float


class AssociationPool(Generic[A]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[_Idle[A]]] = {}
        # Out of use since a reload, until take_expired hands them to the releasing thread
        # (still open till then: they count in open_count). `retired` wakes that thread.
        self._retired: dict[str, list[A]] = {}
        self.retired = threading.Event()
        self._in_use: Counter[str] = Counter()
        # Every (SOP class, syntax) seen per destination, in order: a new association proposes
        # them all (the latest MAX_CONTEXTS), so it serves what the others served.
        self._contexts: dict[str, dict[tuple[str, str], None]] = {}

    def contexts(self, name: str, add: list[tuple[str, str]]) -> list[tuple[str, str]]:
        with self._lock:
            seen = self._contexts.setdefault(name, {})
            for pair in add:
                seen.pop(pair, None)
                seen[pair] = None  # most recent last: kept when trimming to MAX_CONTEXTS
            return list(seen)[-MAX_CONTEXTS:]

    def take(self, name: str, accepts: Callable[[A], bool]
             ) -> tuple[A | None, list[A]]:
        """An idle association to `name` that `accepts`, or None (then the caller opens one);
        and the idle ones that do not accept, which the caller releases so that the new one
        does not count against the destination's limit on top of them."""
        with self._lock:
            idle = self._idle.get(name, [])
            found = next((i for i in reversed(idle) if i.assoc.is_established
                          and accepts(i.assoc)), None)
            self._in_use[name] += 1
            if found is not None:
                idle.remove(found)
                return found.assoc, []
            self._idle[name] = []
            return None, [i.assoc for i in idle]

    def give_back(self, name: str, assoc: A | None, idle_timeout: float) -> None:
        """The caller is done with the association it took (None: it has none any more)."""
        with self._lock:
            if self._in_use[name] > 0:
                self._in_use[name] -= 1
            if assoc is not None and assoc.is_established:
                self._idle.setdefault(name, []).append(
                    _Idle(assoc, time.monotonic(), idle_timeout))

    def open_count(self, name: str) -> int:
        """Associations to `name` this worker holds: in use by other threads, or idle."""
        with self._lock:
            return (self._in_use[name] + len(self._idle.get(name, []))
                    + len(self._retired.get(name, [])))

    def take_expired(self, now: float) -> list[A]:
        """Idle associations past their timeout, and those retired by a reload, for the
        caller to release."""
        with self._lock:
            expired = [a for retired in self._retired.values() for a in retired]
            self._retired.clear()
            for name, idle in self._idle.items():
                keep = [i for i in idle if now - i.since <= i.idle_timeout
                        and i.assoc.is_established]
                expired += [i.assoc for i in idle if i not in keep]
                self._idle[name] = keep
        return expired

    def retire_all_idle(self) -> None:
        """A reload: no delivery takes the idle associations any more (new ones get the new
        settings and certificates); take_expired hands them to the releasing thread. Released
        by the delivery thread that saw the reload, one to a peer gone silent held that
        thread's delivery (to any destination) for the peer's whole acse_timeout."""
        with self._lock:
            for name, idle in self._idle.items():
                self._retired.setdefault(name, []).extend(i.assoc for i in idle)
            self._idle.clear()
        self.retired.set()

    def take_all_idle(self) -> list[A]:
        """Every idle association, retired ones included (the worker stopping)."""
        with self._lock:
            out = [a for retired in self._retired.values() for a in retired]
            out += [i.assoc for idle in self._idle.values() for i in idle]
            self._idle.clear()
            self._retired.clear()
        return out


def release_all(associations: list[A]) -> None:
    for assoc in associations:
        if assoc.is_established:
            assoc.release()
