"""Receptions of one SOP instance reach a destination in the order they were received.

A re-send is new work (README "Duplicates and re-sends"): when a corrected instance is sent
again while the earlier version still waits for a destination, both are delivered, and the
destination must end with the later one. Queue order alone does not promise that: an urgent
rule's later reception goes ahead of a low one's, and two deliveries of one destination can
run on parallel associations. So, per destination and SOP Instance UID, only the oldest
reception still pending is in play (queued, delayed, held or in flight); later ones are
parked here, in arrival order, and the next is let go when the one in play is done with
(delivered, dead-lettered, withdrawn or moved to another destination).

Arrival is the order jobs reach the broker: the order senders got Success for them, and at
a restart the spool's time-ordered job ids.
"""

from __future__ import annotations

from collections import deque

from router.broker.deliveries import Delivery
from router.core.messages import JobHeader


class InstanceOrder:
    def __init__(self) -> None:
        # destination -> SOP Instance UID -> the job id in play
        self._in_play: dict[str, dict[str, str]] = {}
        # destination -> SOP Instance UID -> later receptions, oldest first
        self._parked: dict[str, dict[str, deque[Delivery]]] = {}
        self._counts: dict[str, int] = {}
        # Destinations an instance left play at since the caller last looked (held storage
        # commitments look again: router/broker/commitment_holds.py).
        self.left: set[str] = set()

    def admit(self, delivery: Delivery) -> bool:
        """True: `delivery` may be queued now. False: an older reception of its instance is
        still in play for its destination, and it waits here."""
        uid, job_id = delivery.job.sop_instance_uid, delivery.job.job_id
        if not uid:
            return True
        in_play = self._in_play.setdefault(delivery.destination, {})
        current = in_play.setdefault(uid, job_id)
        if current == job_id:
            return True
        parked = self._parked.setdefault(delivery.destination, {})
        parked.setdefault(uid, deque()).append(delivery)
        self._counts[delivery.destination] = self._counts.get(delivery.destination, 0) + 1
        return False

    def done(self, destination: str, job: JobHeader) -> Delivery | None:
        """`job` is done with at `destination`: the next reception of its instance to put in
        play (the caller queues it), or None."""
        uid = job.sop_instance_uid
        in_play = self._in_play.get(destination, {})
        if not uid or in_play.get(uid) != job.job_id:
            self._unpark(destination, job)
            return None
        waiting = self._parked.get(destination, {}).get(uid)
        if not waiting:
            del in_play[uid]
            self.left.add(destination)
            return None
        following = waiting.popleft()
        self._counts[destination] -= 1
        if not waiting:
            del self._parked[destination][uid]
        in_play[uid] = following.job.job_id
        return following

    def take_parked(self, destination: str) -> list[Delivery]:
        """Remove and return every reception parked for `destination`, in arrival order
        within each instance (an operator's drain: the caller puts them back or moves them
        through admit() again, oldest first)."""
        parked = self._parked.pop(destination, {})
        self._counts.pop(destination, None)
        return [delivery for waiting in parked.values() for delivery in waiting]

    def pending(self, destination: str, uid: str) -> bool:
        """Whether a reception of `uid` is still pending for `destination`."""
        return uid in self._in_play.get(destination, {})

    def parked(self, destination: str) -> int:
        """Jobs waiting here for `destination` (they count in its queue depth)."""
        return self._counts.get(destination, 0)

    def _unpark(self, destination: str, job: JobHeader) -> None:
        waiting = self._parked.get(destination, {}).get(job.sop_instance_uid)
        if not waiting:
            return
        kept = deque(d for d in waiting if d.job.job_id != job.job_id)
        self._counts[destination] -= len(waiting) - len(kept)
        if kept:
            self._parked[destination][job.sop_instance_uid] = kept
        else:
            del self._parked[destination][job.sop_instance_uid]
