"""Storage commitment requests held until their instances reached the upstream (no I/O).

A modality sends its N-ACTION a second after its last C-STORE. Relayed at once, it reached
the PACS while the router still had some of those instances queued for it (a big study, a
backlog, a retry), and the PACS reported them failed: the study was flagged "not
committed". So an N-ACTION whose Referenced SOP Instance UIDs are still pending for the
upstream (or a store destination at the same address: the acceptor names them) waits here
until none is, or until its bound (the upstream's `commitment_hold`), then goes to a worker
as any relayed request. An instance dead-lettered or moved elsewhere meanwhile is no longer
pending: the PACS reports it failed, which is the truth.

The broker calls `settled` with the destinations an instance left (router/broker/
instance_order.py `left`), so each held request is looked at again only when one of its
destinations moved. It then looks at its waiting instances in the request's order, drops
those that left and stops at the first one still pending: each instance is dropped once and
each turn looks at one more, whatever the order the queue drains in, where looking at all of
them on every broker turn cost 5 million lookups (about 6 s of the broker's loop) for 10,000
instances leaving 10 at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from router.core.messages import RelayRequest

# Whether a SOP Instance UID is pending (queued, delayed, held or in flight) for a destination.
Pending = Callable[[str, str], bool]


@dataclass
class Held:
    request: RelayRequest
    acceptor: bytes  # the acceptor socket that sent it, for the answers
    payload: list[bytes]
    since: float
    deadline: float
    # Its instances still pending, in the request's order; those behind the first one may
    # have left since it was last looked at (_first_pending).
    waiting: deque[str] = field(default_factory=deque)

    @property
    def destinations(self) -> tuple[str, ...]:
        return tuple(self.request.hold_destinations)


@dataclass(frozen=True)
class Released:
    """A held request to dispatch now; `pending`: its instances still pending (0 unless the
    bound ended the hold)."""

    held: Held
    by_bound: bool
    pending: int


class CommitmentHolds:
    def __init__(self) -> None:
        self.held: dict[str, Held] = {}

    def __contains__(self, request_id: object) -> bool:
        return request_id in self.held

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, request: RelayRequest, acceptor: bytes, payload: list[bytes],
             pending: Pending, now: float) -> Held | None:
        """Hold `request` if any of its instances is pending for one of its destinations;
        None: nothing to wait for (no bound, no instance pending), dispatch it now."""
        if request.hold_seconds <= 0 or not request.hold_destinations:
            return None
        waiting = _still_pending(request.hold_instances, request.hold_destinations, pending)
        if not waiting:
            return None
        held = Held(request, acceptor, payload, now, now + request.hold_seconds, waiting)
        self.held[request.request_id] = held
        return held

    def settled(self, destinations: Iterable[str], pending: Pending) -> list[Released]:
        """Instances left these destinations: the requests none of whose instances is
        pending any more, taken out to dispatch."""
        moved = set(destinations)
        released = []
        for request_id, held in list(self.held.items()):
            if moved.isdisjoint(held.destinations):
                continue
            _first_pending(held.waiting, held.destinations, pending)
            if not held.waiting:
                del self.held[request_id]
                released.append(Released(held, by_bound=False, pending=0))
        return released

    def expired(self, now: float, pending: Pending) -> list[Released]:
        """The requests whose bound has come, taken out to dispatch as they are."""
        released = []
        for request_id, held in list(self.held.items()):
            if now >= held.deadline:
                del self.held[request_id]
                still = _still_pending(held.waiting, held.destinations, pending)
                released.append(Released(held, by_bound=True, pending=len(still)))
        return released

    def take(self, request_id: str) -> Held | None:
        """Drop a held request (its requester cancelled, its acceptor died)."""
        return self.held.pop(request_id, None)

    def next_due(self) -> float | None:
        return min((h.deadline for h in self.held.values()), default=None)


def _still_pending(instances: Iterable[str], destinations: Iterable[str],
                   pending: Pending) -> deque[str]:
    where = tuple(destinations)
    return deque(uid for uid in dict.fromkeys(instances)
                 if any(pending(d, uid) for d in where))


def _first_pending(waiting: deque[str], destinations: Iterable[str], pending: Pending) -> None:
    """Drop the instances no longer pending from the front of `waiting`, up to the first one
    still pending: the request waits on while there is one."""
    where = tuple(destinations)
    while waiting and not any(pending(d, waiting[0]) for d in where):
        waiting.popleft()
