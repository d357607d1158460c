"""Exceptions with messages an operator can act on; DIMSE-facing ones carry their status."""

from __future__ import annotations

from router.core.dimse_status import Status


class RouterError(Exception):
    """Base class of every error the router raises on purpose."""


class ConfigError(RouterError):
    """The configuration cannot be used; `problems` lists each one with the key that is wrong."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        joined = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{joined}")


class ProtocolError(RouterError):
    """A ZeroMQ message between router processes is malformed or of an unknown schema."""


class DimseRefusal(RouterError):
    """Refuse one DIMSE request with `status`; the message becomes the ErrorComment."""

    status: Status = Status.PROCESSING_FAILURE

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidUID(DimseRefusal):
    status = Status.INVALID_UID


class DatasetMismatch(DimseRefusal):
    """The dataset is not the instance the command names (counted as rejected)."""

    status = Status.DATASET_DOES_NOT_MATCH


class NoRoute(DimseRefusal):
    status = Status.NO_ROUTE


class PatternTooSlow(DimseRefusal):
    """A rule's pattern did not finish on this instance's value within its deadline: the
    instance is refused, never routed as if the pattern had not matched."""

    status = Status.PATTERN_TOO_SLOW

    def __init__(self, rule: str) -> None:
        super().__init__(f"rule {rule}: pattern took too long on this instance's value")
        self.rule = rule


class OutOfResources(DimseRefusal):
    status = Status.OUT_OF_RESOURCES


class QueueFull(OutOfResources):
    """The broker refused the job: its queue is at its bound."""


class CompletionShareFull(QueueFull):
    """The broker refused a job a completion rule would hold: held jobs took their share of
    the queue. Only that sender's instance is refused; new associations are still taken."""

    PREFIX = "queue full for study/series completion"


class DeliveryError(RouterError):
    """Forwarding to one destination failed. `transient` says whether a retry may succeed;
    `during_store`: the destination failed while this instance was on the wire (an abort
    under a C-STORE), so the instance itself may be the cause; `certificate`: a TLS
    certificate was not accepted, the peer's by the router or the router's by the peer (a
    few words saying which and why), which only an operator's change mends; `retry_after`:
    the destination asked not to be tried again for that many seconds (HTTP Retry-After)."""

    def __init__(self, reason: str, message: str, *, transient: bool,
                 during_store: bool = False, certificate: str = "",
                 retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason  # a bounded label: connection, rejected, no_context, status, ...
        self.transient = transient
        self.during_store = during_store
        self.certificate = certificate
        self.retry_after = retry_after


class TLSConfigError(RouterError):
    """TLS material cannot be used; the message names the config key and the file."""
