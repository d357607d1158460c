"""The Dispatcher's data: destination policies, deliveries, job and worker state, outcomes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from router.broker.concurrency import Concurrency
from router.core.config import RetryConfig
from router.core.letter_age import Moment
from router.core.messages import JobHeader
from router.core.time_window import TimeWindow


@dataclass(frozen=True)
class DestinationPolicy:
    max_parallel: int
    retry: RetryConfig
    window: TimeWindow | None = None  # outside it, the destination's queue is held
    max_associations: int | None = None  # pins the association limit (no learning)
    probe_interval: float = 60.0
    idle_timeout: float = 2.0
    # Where and how it is reached (host, port, AE title, TLS, url, ...): a reload that
    # changes it ends the back-off the old settings earned (dispatch_state.py reconfigure).
    address: str = ""

    def concurrency(self) -> Concurrency:
        pinned = self.max_associations is not None
        ceiling = min(self.max_parallel, self.max_associations or self.max_parallel)
        return Concurrency(ceiling, pinned, self.probe_interval, self.idle_timeout)


@dataclass(frozen=True)
class Delivery:
    job: JobHeader
    destination: str
    attempt: int = 1
    # A completed study or series, or a run of a long queue: these jobs in order over one
    # association (job = the first).
    batch: tuple[JobHeader, ...] = ()
    # A part of a completed group too large for one batch (MAX_BATCH), named by the group's
    # first job id: its parts go one after the other, never side by side.
    chain: str = ""
    # How it was dispatched (not what it is: left out of ==).
    others_open: int = field(default=0, compare=False)  # associations open besides this one
    opens_association: bool = field(default=False, compare=False)  # no idle one was there
    lease: int = field(default=0, compare=False)  # the token of the Deliver that sent it

    @property
    def key(self) -> tuple[str, str]:
        return (self.job.job_id, self.destination)

    @property
    def jobs(self) -> tuple[JobHeader, ...]:
        return self.batch or (self.job,)

    @property
    def priority(self) -> int:
        return self.job.priority

    @property
    def size(self) -> int:
        return len(self.jobs)


@dataclass
class JobState:
    header: JobHeader
    pending: set[str]
    # Only ever leased to one delivery at a time by this broker: once settled, no worker can
    # still be reading its instance, so the file may be written over (router/core/recycling).
    # False for jobs found at start (a previous broker's lease may still be running) and
    # after a worker's lease was taken back (the worker may be alive and still sending).
    exclusive: bool = True
    order: int = 0  # arrival number: the oldest pending job of a destination has the lowest
    arrived: float = 0.0  # when it reached the broker, on its steady clock (steady_wall.py)


@dataclass
class WorkerState:
    identity: bytes
    credits: int
    last_seen: float
    leases: dict[tuple[str, str], Delivery] = field(default_factory=dict)


@dataclass(frozen=True)
class Settled:
    """Every destination of this job is done with: remove it from the spool."""

    job: JobHeader
    reusable: bool = field(default=False, compare=False)  # JobState.exclusive at the end


@dataclass(frozen=True)
class DeadLetter:
    delivery: Delivery
    reason: str
    detail: str
    # When it was given up: its record says so even if the spool took it later.
    failed: Moment = field(default_factory=Moment.read, compare=False)


@dataclass(frozen=True)
class Retry:
    delivery: Delivery
    delay: float
    reason: str
    detail: str = ""  # what the worker said
    # This failure started the destination's back-off: log it (the deliveries that fail
    # with it, or while it lasts, are not logged one by one).
    announce: bool = True


Outcome = Settled | DeadLetter | Retry


def backoff(retry: RetryConfig, attempt: int, rand: Callable[[], float]) -> float:
    """Exponential from initial_delay, capped at max_delay, with jitter in [50%, 100%]."""
    # The exponent is capped: a destination down for days fails a thousand probes, and
    # 2.0 ** 1024 overflows.
    base = min(retry.max_delay, retry.initial_delay * 2.0 ** min(attempt - 1, 64))
    return float(base * (0.5 + rand() / 2))
