"""Operator control of destinations, in the broker (the one owner of the queue).

Actions (router/core/messages.py Control, from the HTTP API of router/service/control_api.py):
- pause: the destination's queue holds (nothing sent, nothing lost) until resume. The set of
  paused destinations is kept in `<spool>/control/state.json` (atomic, fsync'd), so a
  restart, or a broker that crashed and came back, keeps them paused.
- resume: the queue goes out again.
- retry: a destination backing off after failures is tried now (its delayed retries too).
- drain: what is queued for it moves to another configured destination, durably
  (router/broker/queue_moves.py).

Fallback (`fallback:` and `fallback_after:` of a destination): once a destination has been
unavailable (connection or association failures, nothing delivered) for `fallback_after`
seconds, what is queued for it, and what arrives for it later, goes to the first of its
fallbacks that is not itself paused or failing. One job (the oldest) stays behind as the
probe: it finds out when the destination is back. From its first success, new work goes to
the destination again; what was handed over stays with the fallback. Held completion groups
move whole, as held groups (drain-to too), so each still goes as one batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from router.broker.deliveries import DeadLetter, Outcome
from router.broker.dispatch import Dispatcher
from router.broker.queue_moves import (
    give_up_queued,
    hold_back,
    put_back,
    release_now,
    retarget,
    take_held,
    take_queued,
)
from router.core.config import RouterConfig
from router.core.durable_files import fsync_path, write_atomically
from router.core.messages import Control, ControlReply
from router.core.spool import Spool

log = logging.getLogger(__name__)

ACTIONS = ("pause", "resume", "retry", "drain")
# The worker's words for the same case (workers/delivery.py), for what is in flight then.
REMOVED = ("destination no longer configured (removed by a config reload); replay the dead "
           "letter to another one")


class DrainFailed(Exception):
    """A spool write failed part way through a drain: `counts["moved"]` jobs did move (their
    `outcomes` must be acted on), the rest are back in the source's queue."""

    def __init__(self, counts: dict[str, int], outcomes: list[Outcome], error: OSError) -> None:
        super().__init__(str(error))
        self.counts, self.outcomes, self.error = counts, outcomes, error


@dataclass(frozen=True)
class FallbackPolicy:
    targets: tuple[str, ...]
    after: float  # seconds unavailable before the fallback takes over


class OperatorControl:
    def __init__(self, dispatcher: Dispatcher, spool: Spool, config: RouterConfig) -> None:
        self.dispatcher = dispatcher
        self.spool = spool
        self.state_path = spool.root / "control" / "state.json"
        self.configured: set[str] = set()
        self.fallbacks: dict[str, FallbackPolicy] = {}
        self.down_since: dict[str, float] = {}  # monotonic: first failure in a row seen
        self.active: dict[str, str] = {}  # destination -> the fallback taking its work
        self.reconfigure(config)
        dispatcher.held |= self._load_paused()

    def reconfigure(self, config: RouterConfig) -> list[Outcome]:
        self.configured = set(config.destinations)
        self.fallbacks = {name: FallbackPolicy(tuple(d.fallback), d.fallback_after)
                          for name, d in config.destinations.items() if d.fallback}
        return self._give_up_removed()

    def _give_up_removed(self) -> list[Outcome]:
        """What is queued for a destination a reload removed becomes `unknown_destination`
        dead letters at once, as a restart makes them. Left queued, a paused one's queue
        stayed parked with nothing said, and the old workers could still send the rest
        before they took the new config."""
        outcomes: list[Outcome] = []
        for name in sorted(set(self.dispatcher.queues) - self.configured):
            given = give_up_queued(self.dispatcher, name, "unknown_destination", REMOVED)
            if name in self.dispatcher.held:
                self.dispatcher.held.discard(name)
                with contextlib.suppress(OSError):  # a start drops an unknown name anyway
                    self._save_paused(self.dispatcher.held)
            if given:
                log.warning("destination %s is no longer configured: its %d queued job(s) "
                            "are unknown_destination dead letters, to replay elsewhere",
                            name, sum(isinstance(o, DeadLetter) for o in given))
            outcomes += given
        return outcomes

    # --- the paused set on the spool -------------------------------------------------------

    def _load_paused(self) -> set[str]:
        try:
            data = json.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): no destination starts paused; pause them again "
                      "if needed", self.state_path, exc)
            return set()
        paused = {str(n) for n in data.get("paused", [])} if isinstance(data, dict) else set()
        if paused:
            log.warning("destinations paused by an operator (kept from before the restart): "
                        "%s; `dicom-router destinations resume NAME` sends their queues",
                        ", ".join(sorted(paused)))
        return paused

    def _save_paused(self, paused: set[str]) -> None:
        folder: Path = self.state_path.parent
        folder.mkdir(exist_ok=True)
        body = json.dumps({"paused": sorted(paused)}).encode()
        write_atomically(self.state_path, body)
        fsync_path(folder, directory=True)

    # --- actions ---------------------------------------------------------------------------

    def handle(self, request: Control, now: float) -> tuple[ControlReply, list[Outcome]]:
        name, action = request.destination, request.action
        problem = self._problem(request)
        if problem is not None:
            return ControlReply(request.request_id, False, problem), []
        outcomes: list[Outcome] = []
        try:
            if action == "pause":
                counts, detail = self._pause(name, True)
            elif action == "resume":
                counts, detail = self._pause(name, False)
            elif action == "retry":
                counts, detail = self._retry(name)
            else:
                counts, outcomes, failure = self.drain_all(name, request.target)
                detail = (f"moved {counts['moved']} queued job(s) from {name} to "
                          f"{request.target}; {counts['in_flight']} in flight stay with {name}")
                if failure is not None:
                    return ControlReply(
                        request.request_id, False,
                        f"{detail}; then the spool ({self.spool.root}) refused a write "
                        f"({failure}): the other {counts['left']} stay queued for {name}; "
                        "check its disk", counts, server_error=True), outcomes
        except OSError as exc:  # the spool refused a write: nothing was changed
            return ControlReply(request.request_id, False,
                                f"cannot write to the spool ({self.spool.root}: {exc}): "
                                f"{action} not done; check its disk",
                                server_error=True), outcomes
        log.warning("operator %s (%s) %s: %s", request.actor or "unknown",
                    request.source or "unknown address", action, detail)
        return ControlReply(request.request_id, True, detail, counts), outcomes

    def _problem(self, request: Control) -> str | None:
        known = ", ".join(sorted(self.configured)) or "none"
        if request.action not in ACTIONS:
            return f"unknown action {request.action!r} (use {', '.join(ACTIONS)})"
        if request.destination not in self.dispatcher.queues:
            return f"no destination {request.destination!r} (configured: {known})"
        if request.destination not in self.configured:  # its queue was dead-lettered
            return (f"destination {request.destination!r} was removed by a config reload "
                    f"(configured: {known}); its jobs are unknown_destination dead letters")
        if request.action != "drain":
            return None
        if request.target not in self.configured:
            return f"cannot drain to {request.target!r}: not a configured destination " \
                   f"(configured: {known})"
        if request.target == request.destination:
            return "cannot drain a destination into itself"
        return None

    def _pause(self, name: str, paused: bool) -> tuple[dict[str, int], str]:
        was = name in self.dispatcher.held
        if was != paused:
            # Saved first: a restart must find what the running broker does, and a spool
            # that refuses the write leaves both as they were.
            self._save_paused(self.dispatcher.held | {name} if paused
                              else self.dispatcher.held - {name})
        if paused:
            self.dispatcher.held.add(name)
        else:
            self.dispatcher.held.discard(name)
        depth = self.dispatcher.depth(name)
        state = "paused" if paused else "resumed"
        again = "" if was != paused else " (it already was)"
        return {"queued": depth, "in_flight": self.dispatcher.in_flight[name]}, \
            f"{name} {state}{again}; {depth} job(s) queued for it"

    def _retry(self, name: str) -> tuple[dict[str, int], str]:
        released = release_now(self.dispatcher, name)
        depth = self.dispatcher.depth(name)
        held = " (still paused by an operator: resume it to send)" \
            if name in self.dispatcher.held else ""
        return {"queued": depth, "released": released}, \
            f"{name} is tried now{held}; {depth} job(s) queued, {released} retries released"

    def drain(self, source: str, target: str, keep: int = 0) -> tuple[dict[str, int],
                                                                       list[Outcome]]:
        """Move what is queued for `source` to `target` (all but the first `keep` jobs)."""
        # A delayed retry kept (a fallback's probe) waits out its back-off at its attempt:
        # queued again at once, a probe that timed out went every heartbeat at attempt 1.
        retrying = min(keep, self.dispatcher.delayed.jobs(source))
        jobs = take_queued(self.dispatcher, source, keep_retries=retrying, held=False)
        keep -= retrying
        put_back(self.dispatcher, source, jobs[:keep])
        # Held completion groups move whole, with their clocks: `target` sends each as one
        # batch when complete, and the probe kept is never one of their jobs.
        held = take_held(self.dispatcher, source)
        outcomes: list[Outcome] = []
        moved = held_moved = 0
        try:
            for job in jobs[keep:]:
                outcomes += retarget(self.dispatcher, self.spool, job, source, target)
                moved += 1
            for group, job in held:
                outcomes += retarget(self.dispatcher, self.spool, job, source, target, group)
                moved += 1
                held_moved += 1
            if moved:
                self.spool.sync_jobs()
        except OSError as exc:
            raise DrainFailed({"moved": moved, "in_flight": self.dispatcher.in_flight[source]},
                              outcomes, exc) from exc
        finally:  # after a failed write
            put_back(self.dispatcher, source, jobs[keep + moved - held_moved:])
            hold_back(self.dispatcher, source, held[held_moved:])
        return {"moved": moved, "in_flight": self.dispatcher.in_flight[source]}, outcomes

    def drain_all(self, source: str, target: str) -> tuple[dict[str, int], list[Outcome],
                                                             OSError | None]:
        """drain() for an operator, who must hear how many moved when a write failed part
        way (those did move, and their outcomes count) and how many stay: `left`."""
        try:
            counts, outcomes = self.drain(source, target)
        except DrainFailed as exc:
            return exc.counts | {"left": self.dispatcher.depth(source)}, exc.outcomes, \
                exc.error
        return counts, outcomes, None

    # --- fallback --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Outcome]:
        """Once a heartbeat: start or end fallbacks, and hand new work over while one runs."""
        outcomes: list[Outcome] = []
        for name, policy in self.fallbacks.items():
            if name not in self.dispatcher.queues:
                continue
            if self.dispatcher.is_up(name):
                self.down_since.pop(name, None)
                if self.active.pop(name, None) is not None:
                    log.warning("destination %s is back: new work goes to it again (what its "
                                "fallback took stays there)", name)
                continue
            since = self.down_since.setdefault(name, now)
            if now - since < policy.after:
                continue
            target = self._usable(policy.targets, now)
            if target is None:
                continue
            if self.active.get(name) != target:
                self.active[name] = target
                log.warning("destination %s unavailable for %.0fs: its queue goes to %s; one "
                            "job stays as the probe that finds it back", name, now - since,
                            target)
            try:
                outcomes += self.drain(name, target, keep=1)[1]
            except DrainFailed as exc:
                outcomes += exc.outcomes  # those moved
                log.error("cannot hand %s's queue to %s (spool write failed: %s); %d moved",
                          name, target, exc.error, exc.counts["moved"])
        return outcomes

    def _usable(self, targets: tuple[str, ...], now: float) -> str | None:
        d = self.dispatcher
        for target in targets:
            if target in d.queues and target not in d.held and not d.is_paused(target, now) \
                    and d.is_up(target):
                return target
        return None

    def summary(self, name: str, now: float) -> dict[str, float | int | bool | str]:
        """Extra /status fields: paused by an operator, fallback in use, held while busy."""
        out: dict[str, float | int | bool | str] = {
            "paused": name in self.dispatcher.held,
            "removed": name not in self.configured,  # by a reload; its queue dead-letters
            "busy_for": max(0.0, self.dispatcher.busy_until[name] - now),
        }
        if name in self.down_since:
            out["unavailable_for"] = now - self.down_since[name]
        if name in self.active:
            out["fallback_to"] = self.active[name]
        return out
