"""The broker's state machine, without I/O: jobs, per-destination queues, credits, leases.

Rules it keeps:
- A job is queued once per destination; it is settled when every destination either has it
  or was given up (dead letter). Only then may its spool files go.
- A delivery is sent only to a worker with credit, and to a destination below its live
  association limit (router/broker/concurrency.py: learned, at most `max_parallel`), so a slow
  destination never takes every worker from the others, and a destination that serves one
  association at a time gets one. A worker that holds an idle association to the
  destination is preferred to opening a new one.
- A destination that is busy (refused one more association) is not down: the limit drops,
  the delivery goes back to the front of its queue without spending an attempt.
- Receptions of one SOP instance reach a destination in arrival order: a later one waits
  until the earlier one is done with there (router/broker/instance_order.py).
- A queue longer than the limit goes out in runs (one Deliver carrying several jobs), so the
  per-instance cost of a round trip through the broker is shared; a young, short queue
  waits up to `queue.linger` to become one (router/broker/gathering.py).
- A delivery a worker holds is leased to it: when the worker says goodbye or stops
  heartbeating, its deliveries go back to the front of their queues (same attempt number).
- A failure of the destination itself (cannot connect, association aborted or rejected
  transiently, a DICOMweb service that answers it is down or refuses its credentials)
  pauses that destination with exponential backoff and jitter (never shorter than its
  Retry-After); the delivery goes back to the front of its queue without spending an
  attempt, so a PACS that is down for a weekend holds its queue instead of turning it into
  dead letters.
- An abort (or a protocol violation) while an instance is on the wire is either: a PACS
  whose storage is down, or an instance it cannot take. The destination backs off as
  above; the job goes behind the destination's other jobs, so the next try is another
  instance; it spends an attempt only if the destination took something else since this
  job's previous such failure. A PACS that aborts everything keeps its whole queue; an
  instance that alone makes it abort becomes a dead letter after its attempts.
- A worker that cannot write its copy of the instance in the spool (a morph,
  de-identification or transcode on a full or failing disk) failed on the router's own
  disk: the delivery waits and spends no attempt. The spool backs off once per spell, not
  per delivery, one waiting delivery probes it, and once it takes a copy again every
  waiting delivery goes at once (router/broker/spool_wait.py).
- A destination that is down (since a failure that paused it) is probed with one delivery
  at a time, one job (or the batch it failed in, sent in order): only once it takes one (or
  answers about one) do its other deliveries go, up to its limit. A DICOMweb service behind
  a proxy that is down otherwise got `max_parallel` requests at each pause's end.
- Deliveries to destinations that are down hold at most half the workers' delivery threads
  (at least one): the rest stay for destinations that take instances. Behind a dead WAN
  link a probe hangs for its whole connect timeout, and 40 such probes held every thread
  while 10 healthy destinations' 2,000 deliveries waited minutes (5 s without them).
- A failure of one delivery (a failure status, a DIMSE timeout) is retried after exponential
  backoff with jitter while it is transient and attempts remain; otherwise it becomes a
  dead letter with the reason.

The state the rules act on is kept in dispatch_state.py, its data types in deliveries.py.
"""

from __future__ import annotations

from dataclasses import replace

from router.broker.completion import MAX_BATCH
from router.broker.concurrency import ASSOCIATION_LOST, Choice
from router.broker.deliveries import Delivery, Outcome, Retry, backoff
from router.broker.dispatch_state import DispatchState
from router.core.failures import (
    DESTINATION_FAILURES,
    HOLD_BACK_FAILURES,
    SPOOL_FAILURES,
    STORE_FAILURES,
)
from router.core.messages import JobHeader, Result

BUSY_HOLD_SECONDS = 1.0  # a busy destination with nothing of ours open: wait, then try again
RUN_MAX_JOBS = 32  # jobs per run of a long queue (one Deliver)
RUN_MAX_BYTES = 64 * 1024**2


class Dispatcher(DispatchState):
    """The rules: what a worker's result does to the state, and what to send next."""

    def result(self, identity: bytes, result: Result, now: float) -> list[Outcome]:
        delivery = self._lease_back(identity, (result.job_id, result.destination),
                                    result.lease, now)
        if delivery is None:
            return []
        self._association_ended(identity, delivery, [result], now)
        return self._outcome(delivery, result, now)

    def _association_ended(self, identity: bytes, delivery: Delivery, results: list[Result],
                           now: float) -> None:
        """Tell the destination's Concurrency how the association fared (busy, lost, fine)."""
        name = delivery.destination
        concurrency = self.concurrency.get(name)
        if concurrency is None:
            return
        failed = [r for r in results if not r.delivered]
        reason = failed[0].reason if failed else ""
        before = concurrency.limit
        if reason == "busy":
            if concurrency.busy(identity, now):
                self.limit_changes.append((name, before, concurrency.limit, "busy"))
            return
        lost = next((r.reason for r in failed if r.reason in ASSOCIATION_LOST), reason)
        concurrency.finished(identity, lost, now, delivery.opens_association)
        # Jobs gathering for their run are not a backlog the associations fail to keep up with.
        queue = self.queues[name]
        backlog = 0 if self.gathering.waits(name, queue, now) else queue.jobs
        if any(r.delivered for r in results) and concurrency.delivered(backlog, now):
            self.limit_changes.append((name, before, concurrency.limit, "probe"))

    def batch_result(self, identity: bytes, destination: str, results: list[Result],
                     now: float, lease: int = 0) -> list[Outcome]:
        """A batch's results: each job on its own, except that a failure of the destination
        itself puts what was not delivered back as one batch at the front of the queue."""
        if not results:
            return []
        batch = self._lease_back(identity, (results[0].job_id, destination), lease, now)
        if batch is None:
            return []
        self._association_ended(identity, batch, results, now)
        by_id = {job.job_id: job for job in batch.jobs}
        outcomes: list[Outcome] = []
        held_back: list[JobHeader] = []
        failure: Result | None = None
        for result in results:
            job = by_id.get(result.job_id)
            if job is None:
                continue
            if (not result.delivered and result.transient
                    and result.reason in HOLD_BACK_FAILURES and not _store_failure(result)):
                held_back.append(job)
                failure = result
                continue
            if _store_failure(result):
                failure = result  # the untried rest waits at the front, this job behind it
            outcomes += self._outcome(Delivery(job, destination, batch.attempt), result, now)
        reported = {r.job_id for r in results}
        held_back += [j for j in batch.jobs if j.job_id not in reported]  # never tried
        if held_back:
            rest = Delivery(held_back[0], destination, batch.attempt, tuple(held_back),
                            batch.chain)
            if failure is not None and failure.reason == "busy":
                outcomes.append(self._busy(rest, now))
            else:
                reason = failure.reason if failure is not None else "aborted"
                detail = failure.detail if failure is not None else ""
                wait = failure.retry_after if failure is not None else 0.0
                outcomes.append(self._pause(rest, reason, now, detail, wait))
        return outcomes

    def _outcome(self, delivery: Delivery, result: Result, now: float) -> list[Outcome]:
        if self._spool_takes_copies(delivery, result):
            for waited in self.spool_wait.took_copy():
                self._requeue_back(waited)
        if result.delivered:
            self._answered(delivery.destination, now)
            self.delivered_total[delivery.destination] += 1
            return self._finish(delivery)
        if result.reason == "withdrawn":
            return self._finish(delivery)  # the sender was told to retry; nothing to deliver
        if result.reason == "status":  # it answered about this instance: it is up
            self._answered(delivery.destination, now)
        if result.reason == "busy":
            return [self._busy(delivery, now)]
        if _store_failure(result):
            return self._store_failed(delivery, result, now)
        if result.transient and result.reason in SPOOL_FAILURES:
            return [self._spool_wait(delivery, result, now)]
        if result.transient and result.reason in DESTINATION_FAILURES:
            return [self._pause(delivery, result.reason, now, result.detail,
                                result.retry_after)]
        policy = self.policies[delivery.destination]
        if result.transient and delivery.attempt < policy.retry.max_attempts:
            delay = backoff(policy.retry, delivery.attempt, self.rand)
            retry = Delivery(delivery.job, delivery.destination, delivery.attempt + 1)
            self.delayed.push(now + delay, retry)
            return [Retry(retry, delay, result.reason)]
        reason = result.reason if not result.transient else f"{result.reason}_retries_exhausted"
        return self._give_up(delivery, reason, result.detail)

    def _answered(self, name: str, now: float) -> None:
        """It took an instance or answered about one: up, and its pause is over (kept, the
        rest of its queue waited for the old pause to end)."""
        if self.failures_in_a_row[name]:
            self.recoveries.append((name, now - self.down_since.get(name, now),
                                    self.failures_in_a_row[name]))
        self.failures_in_a_row[name] = 0
        self.readdressed.discard(name)
        self.paused_until[name] = 0.0

    def _pause(self, delivery: Delivery, reason: str, now: float, detail: str = "",
               retry_after: float = 0.0) -> Retry:
        """Hold the destination's whole queue; this delivery waits at its front."""
        self._requeue_front(delivery)
        return self._back_off(delivery, reason, now, detail, retry_after)

    def _back_off(self, delivery: Delivery, reason: str, now: float, detail: str,
                  retry_after: float = 0.0) -> Retry:
        """`retry_after`: the destination's own minimum wait (HTTP Retry-After)."""
        name = delivery.destination
        starts = now >= self.paused_until[name]
        news = False
        if starts:  # deliveries already out fail too: count once
            # Logged when it goes down, or fails another way: not at each failed probe (300
            # destinations behind a dead link wrote a line each per probe, for hours).
            if not self.failures_in_a_row[name]:
                self.down_since[name] = now
                news = True
            news = news or self.backoff_reason.get(name, "").partition(":")[0] != reason
            self.failures_in_a_row[name] += 1
            policy = self.policies[name]
            delay = max(backoff(policy.retry, self.failures_in_a_row[name], self.rand),
                        retry_after)
            self.paused_until[name] = now + delay
            self.backoff_reason[name] = f"{reason}: {detail}" if detail else reason
        return Retry(delivery, self.paused_until[name] - now, reason, detail, announce=news)

    def _store_failed(self, delivery: Delivery, result: Result, now: float) -> list[Outcome]:
        """The destination aborted (or broke the protocol) with this instance on the wire:
        it backs off, and the job goes behind its other jobs. The attempt is spent only if
        the destination took something else since this job's previous such failure: then
        the instance, not the destination, looks like the cause."""
        name = delivery.destination
        taken = self.delivered_total[name]
        spent = self.store_failed_at.get(delivery.key, taken) < taken
        self.store_failed_at[delivery.key] = taken
        retry = self._back_off(delivery, result.reason, now, result.detail)
        if not spent:
            self._requeue_back(delivery)
            return [retry]
        if delivery.attempt >= self.policies[name].retry.max_attempts:
            return self._give_up(delivery, f"{result.reason}_retries_exhausted", result.detail)
        again = Delivery(delivery.job, name, delivery.attempt + 1)
        self._requeue_back(again)
        return [replace(retry, delivery=again)]

    def _spool_wait(self, delivery: Delivery, result: Result, now: float) -> Retry:
        """The spool could not take the worker's copy: wait with the others for the spool,
        same attempt (router/broker/spool_wait.py)."""
        again = Delivery(delivery.job, delivery.destination, delivery.attempt)
        retry = self.policies[delivery.destination].retry
        why = f"{result.reason}: {result.detail}" if result.detail else result.reason
        delay, starts = self.spool_wait.failed(again, retry, why, now, self.rand)
        return Retry(again, delay, result.reason, result.detail, announce=starts)

    def _spool_takes_copies(self, delivery: Delivery, result: Result) -> bool:
        """A delivery that wrote its copy succeeded, or the spool's probe got past its copy
        (whatever the destination did then): deliveries waiting for the spool may go."""
        if not self.spool_wait.waiting and self.spool_wait.probe is None:
            return False
        if result.delivered and result.wrote_copy:
            return True
        return delivery.key == self.spool_wait.probe and result.reason not in SPOOL_FAILURES

    def _busy(self, delivery: Delivery, now: float) -> Retry:
        """The destination is busy, not down: no attempt spent, no failure counted. With none
        of our associations open to it (another sender holds it), wait a moment first."""
        name = delivery.destination
        self._requeue_front(delivery)
        if self.concurrency[name].total_in_use == 0:
            self.busy_until[name] = now + BUSY_HOLD_SECONDS
        return Retry(delivery, max(0.0, self.busy_until[name] - now), "busy")

    # --- dispatch ---------------------------------------------------------------------------

    def _release_due(self, now: float) -> None:
        probe = self.spool_wait.probe_due(now)
        if probe is not None:
            self._requeue_front(probe)
        for delivery in self.delayed.pop_due(now):
            if delivery.job.job_id in self.jobs:
                self.queues[delivery.destination].append(delivery)
        for destination, deliveries in self.holds.due(self.steady()):
            pending = [d.job for d in deliveries if d.job.job_id in self.jobs]
            # Parts sent side by side over two associations reached the destination
            # interleaved: a chain goes one part at a time (_next_sendable).
            chain = pending[0].job_id if len(pending) > MAX_BATCH else ""
            for start in range(0, len(pending), MAX_BATCH):
                jobs = tuple(pending[start:start + MAX_BATCH])
                self.queues[destination].append(Delivery(jobs[0], destination, 1, jobs, chain))

    def dispatch(self, now: float) -> list[tuple[bytes, Delivery]]:
        """Deliveries to send now, round-robin across destinations, within credits and limits."""
        self._release_due(now)
        self.gathering.observe(self.queues, now)
        sends: list[tuple[bytes, Delivery]] = []
        names = list(self.queues)
        down_held = sum(n for name, n in self.in_flight.items() if n and not self.is_up(name))
        while any(w.credits > 0 for w in self.workers.values()):
            picked = self._next_sendable(names, now, down_held < self._down_share())
            if picked is None:
                break
            name, choice = picked
            down_held += 0 if self.is_up(name) else 1
            # A learning probe (one association more while others are open) carries one job:
            # if the destination leaves it unanswered, one job waits busy_timeout, not a run
            # of 32. A pinned limit (max_associations) is known, not probed.
            probe = ((choice.new_association and choice.others_open > 0
                      and not self.concurrency[name].pinned) or not self.is_up(name))
            delivery = replace(self._take_run(name, single=probe), others_open=choice.others_open,
                               opens_association=choice.new_association,
                               lease=next(self._leases))
            self.gathering.taken(name, self.queues[name])
            worker = self.workers[choice.worker]
            worker.credits -= 1
            worker.leases[delivery.key] = delivery
            self.in_flight[name] += 1
            sends.append((worker.identity, delivery))
        return sends

    def _take_run(self, name: str, single: bool = False) -> Delivery:
        """The next delivery; with a queue longer than the destination's limit, a run of the
        plain deliveries that follow it (same priority and attempt), up to RUN_MAX_JOBS and
        RUN_MAX_BYTES, so that the limit's associations share the queue evenly."""
        queue, concurrency = self.queues[name], self.concurrency[name]
        # Associations free for this queue, counting the one this delivery takes.
        free = max(1, concurrency.limit - concurrency.total_in_use + 1)
        length = 1 if single else min(RUN_MAX_JOBS, -(-len(queue) // free))
        first = queue.popleft()
        if first.batch:
            return first
        jobs, size = [first.job], first.job.size
        while len(jobs) < length:
            item = queue.peek()
            if (item is None or item.batch or item.attempt != first.attempt
                    or item.priority != first.priority or size + item.job.size > RUN_MAX_BYTES):
                break
            queue.popleft()
            jobs.append(item.job)
            size += item.job.size
        if len(jobs) == 1:
            return first
        return Delivery(first.job, name, first.attempt, tuple(jobs))

    def _down_share(self) -> int:
        """Delivery threads that deliveries to destinations that are down may hold at once."""
        threads = sum(w.credits + len(w.leases) for w in self.workers.values())
        return max(1, threads // 2)

    def _next_sendable(self, names: list[str], now: float, probes: bool = True
                       ) -> tuple[str, Choice] | None:
        """The next destination after the last one served that has work and room, with the
        worker to send it to; a destination that is down only while `probes` allows."""
        credits = {w.identity: w.credits for w in self.workers.values()}
        for offset in range(len(names)):
            index = (self._rotation + offset) % len(names)
            name = names[index]
            if (not self.queues[name] or self.paused_until[name] > now or name in self.held
                    or (not probes and not self.is_up(name))
                    or self.busy_until[name] > now or not self.in_window(name)
                    or (self.in_flight[name] > 0 and not self.is_up(name))  # probing
                    or self.gathering.waits(name, self.queues[name], now)
                    or self._chain_waits(name)):
                continue
            choice = self.concurrency[name].choose(credits, now)
            if choice is not None:
                self._rotation = index + 1  # the next call starts after this one: no starvation
                return name, choice
        return None

    def _chain_waits(self, name: str) -> bool:
        """The next delivery is a part of a group whose earlier part is still in flight."""
        head = self.queues[name].peek()
        chain = head.chain if head is not None else ""
        return bool(chain) and any(d.chain == chain and d.destination == name
                                   for w in self.workers.values() for d in w.leases.values())


def _store_failure(result: Result) -> bool:
    """The destination failed while this delivery's instance was on the wire."""
    return (not result.delivered and result.transient and result.during_store
            and result.reason in STORE_FAILURES)
