"""Messages between router processes: frozen dataclasses, encoded as versioned msgpack maps.

Dataset bytes never travel in a message: a job names its spool file by job id. Nothing is
pickled, so a malformed or foreign frame is a ProtocolError, never code execution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from router.core.errors import ProtocolError
from router.core.job_header import JobHeader

SCHEMA_VERSION = 1


class Message:
    """Base of every message; `kind` is the type tag on the wire."""

    kind: ClassVar[str]


@dataclass(frozen=True)
class Submit(Message):
    """Acceptor -> broker: a job committed to the spool, to be queued."""

    kind: ClassVar[str] = "submit"
    job: JobHeader


@dataclass(frozen=True)
class Accepted(Message):
    """Broker -> acceptor: the job is queued; the sender may be told Success."""

    kind: ClassVar[str] = "accepted"
    job_id: str


@dataclass(frozen=True)
class Refused(Message):
    """Broker -> acceptor: the job is not taken (queue full, ...); the sender gets 0xA700."""

    kind: ClassVar[str] = "refused"
    job_id: str
    reason: str


@dataclass(frozen=True)
class Ready(Message):
    """Worker -> broker: I can take `credits` more deliveries."""

    kind: ClassVar[str] = "ready"
    credits: int


@dataclass(frozen=True)
class Deliver(Message):
    """Broker -> worker: send this job's spool file to one destination; with `batch`, send
    every job of it in order over one association (a completed study or series)."""

    kind: ClassVar[str] = "deliver"
    job: JobHeader
    destination: str
    attempt: int
    batch: list[JobHeader] = dataclasses.field(default_factory=list)
    # Associations the router holds to the destination besides the one this may open: when
    # > 0, a new association left unanswered for busy_timeout means busy, not down.
    others_open: int = 0
    # This dispatch's token, echoed in its Result/BatchResult: the broker matches answers to
    # what it sent, not merely to a job id (an answer to an earlier broker's delivery of the
    # same job, after a broker restart, must not settle this one).
    lease: int = 0


@dataclass(frozen=True)
class Result(Message):
    """Worker -> broker: the outcome of one Deliver; it also returns that delivery's credit."""

    kind: ClassVar[str] = "result"
    job_id: str
    destination: str
    delivered: bool
    reason: str = ""  # bounded label when not delivered
    transient: bool = False
    detail: str = ""  # operator-facing message
    lease: int = 0  # the Deliver's token
    # The destination failed while this instance was on the wire (DeliveryError.during_store)
    during_store: bool = False
    # Delivered from a copy the worker wrote in the spool (a morph, de-identification or
    # transcode): the spool takes copies, and deliveries waiting for it may go.
    wrote_copy: bool = False
    # The destination asked for at least this many seconds before the next try (Retry-After)
    retry_after: float = 0.0


@dataclass(frozen=True)
class BatchResult(Message):
    """Worker -> broker: the outcome of a batch Deliver, one Result per job, one credit."""

    kind: ClassVar[str] = "batch_result"
    destination: str
    results: list[Result]
    lease: int = 0  # the Deliver's token


@dataclass(frozen=True)
class Heartbeat(Message):
    kind: ClassVar[str] = "heartbeat"


@dataclass(frozen=True)
class Goodbye(Message):
    """Worker -> broker: I am stopping; requeue whatever I still hold."""

    kind: ClassVar[str] = "goodbye"


# --- relayed requests: queries, retrieves, N-services (router/relay_*.py, workers/relay.py) ---
# A dataset travels as a frame of its own after the header frame, encoded in the transfer
# syntax named in the header; the header says whether one follows (`has_dataset`).


@dataclass(frozen=True)
class RelayRequest(Message):
    """Acceptor -> broker -> worker: send this request to the first upstream that answers."""

    kind: ClassVar[str] = "request"
    request_id: str
    command: str  # "C-FIND", "C-GET", "C-MOVE", "N-GET", "N-SET", "N-ACTION", ...
    upstreams: list[str]  # destination names (or known AE titles, `to_known_ae`) in order
    calling_ae: str
    called_ae: str
    peer_address: str
    sop_class_uid: str
    transfer_syntax_uid: str  # of the dataset frame, and of the answers' datasets
    sop_instance_uid: str = ""  # affected or requested SOP instance (N-services)
    priority: int = 0
    move_destination: str = ""  # C-MOVE: the AE title the upstream sends to
    move_message_id: int = 0  # C-MOVE relay: the message ID the upstream's C-STOREs carry
    action_type_id: int = 0  # N-ACTION
    event_type_id: int = 0  # N-EVENT-REPORT
    attribute_ids: list[int] = dataclasses.field(default_factory=list)  # N-GET tags
    # C-GET: the storage contexts the requester accepted as SCP, [[sop class, [syntaxes]]]:
    # the worker proposes the same to the upstream.
    storage_contexts: list[list[Any]] = dataclasses.field(default_factory=list)
    to_known_ae: bool = False  # upstreams are known AE titles (storage commitment results)
    has_dataset: bool = False
    # Storage commitment: the broker holds the request up to hold_seconds while any of
    # hold_instances (Referenced SOP Instance UIDs) is pending for one of hold_destinations
    # (router/broker/commitment_holds.py).
    hold_seconds: float = 0.0
    hold_destinations: list[str] = dataclasses.field(default_factory=list)
    hold_instances: list[str] = dataclasses.field(default_factory=list)
    transaction_uid: str = ""  # a held commitment's, for the broker's log (operators know it)


@dataclass(frozen=True)
class RelayResponse(Message):
    """Worker -> broker -> acceptor: one answer of the upstream (pending or final)."""

    kind: ClassVar[str] = "response"
    request_id: str
    status: int
    final: bool
    upstream: str = ""
    error_comment: str = ""
    remaining: int = -1  # C-GET/C-MOVE sub-operation counts; -1: not in the answer
    completed: int = -1
    failed: int = -1
    warning: int = -1
    sop_class_uid: str = ""  # N-CREATE / N-EVENT-REPORT answers
    sop_instance_uid: str = ""
    has_dataset: bool = False
    # The other status elements of the answer, by keyword (ErrorID: int; OffendingElement,
    # AttributeIdentifierList: tags as ints), relayed as the upstream sent them.
    status_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    # No status came from the upstream (the worker's DIMSE timeout, an abort): it may have
    # taken the request all the same (a storage commitment's result may still come).
    unanswered: bool = False


@dataclass(frozen=True)
class RelayStore(Message):
    """Worker -> acceptor: a C-GET sub-operation's instance, a file in the spool's relay
    folder (the bytes never travel), to be sent to the requester as is."""

    kind: ClassVar[str] = "relay_store"
    request_id: str
    file_name: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class RelayProgress(Message):
    """Worker -> acceptor: data for this request is still arriving from the upstream (a
    C-GET instance that takes longer than a timeout to come): the acceptor's
    request_timeout counts silence, so its wait starts again. At most one a second. Broker
    -> acceptor: a storage commitment that could be held goes to a worker now (its wait
    for the answer ends its allowance for the hold, router/relay/call.py)."""

    kind: ClassVar[str] = "relay_progress"
    request_id: str


@dataclass(frozen=True)
class RelayAck(Message):
    """Acceptor -> worker: one RelayStore was sent on; the worker may send another."""

    kind: ClassVar[str] = "relay_ack"
    request_id: str


@dataclass(frozen=True)
class RelayCancel(Message):
    """Acceptor -> worker: the requester sent C-CANCEL (or went away): stop the upstream."""

    kind: ClassVar[str] = "relay_cancel"
    request_id: str


@dataclass(frozen=True)
class RelayProbe(Message):
    """Acceptor -> broker, after a silence: is this request still on its way? A broker that
    has no route for it (one restarted since the request went out) answers the acceptor with
    a final failure; one that has says nothing."""

    kind: ClassVar[str] = "relay_probe"
    request_id: str
    command: str = ""  # C-FIND, C-GET...: the failure status a broker that lost it answers


# --- operator control (router/broker/control.py): HTTP process -> broker -> HTTP process ---------


@dataclass(frozen=True)
class Control(Message):
    """An operator's action on a destination: pause, resume, retry, drain (to `target`).
    `actor` and `source` (who, from where) go into the broker's log line."""

    kind: ClassVar[str] = "control"
    request_id: str
    action: str
    destination: str
    target: str = ""
    actor: str = ""
    source: str = ""


@dataclass(frozen=True)
class ControlReply(Message):
    """Broker -> HTTP process: what the action did (`counts`), or why it was refused."""

    kind: ClassVar[str] = "control_reply"
    request_id: str
    ok: bool
    detail: str
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    # Not done because the router failed (the spool refused a write), not the request:
    # the API answers 503 instead of 400.
    server_error: bool = False


RELAY_TYPES = (RelayRequest, RelayResponse, RelayStore, RelayProgress, RelayAck, RelayCancel,
               RelayProbe)

_TYPES: dict[str, type[Message]] = {
    cls.kind: cls for cls in (Submit, Accepted, Refused, Ready, Deliver, Result, BatchResult,
                              Heartbeat, Goodbye, Control, ControlReply, *RELAY_TYPES)
}


def _plain(value: Any) -> Any:
    if isinstance(value, JobHeader):
        return value.to_dict()
    if isinstance(value, Result):
        return {name: getattr(value, name) for name, _ in _field_defaults(Result)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def encode(message: Message) -> bytes:
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "type": message.kind}
    for name, _ in _field_defaults(type(message)):
        body[name] = _plain(getattr(message, name))
    return msgpack.packb(body, use_bin_type=True)


_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}


def _field_defaults(cls: type) -> tuple[tuple[str, bool], ...]:
    """(name, required) per field, computed once per class (dataclasses.fields is slow on
    the hot path): a field without a default (plain or a factory) must be on the wire."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = tuple((f.name, f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
                       for f in dataclasses.fields(cls))
        _FIELDS[cls] = fields
    return fields


def _result(value: Any) -> Result:
    if not isinstance(value, dict):
        raise ProtocolError("a batch result entry is not a map")
    try:
        return Result(**value)
    except TypeError as exc:
        raise ProtocolError(f"bad batch result entry: {exc}") from None


def _field_value(name: str, value: Any) -> Any:
    if name == "job":
        return JobHeader.from_dict(value)
    if name == "batch":
        if not isinstance(value, list):
            raise ProtocolError("deliver batch is not a list")
        return [JobHeader.from_dict(v) for v in value]
    if name == "results":
        if not isinstance(value, list):
            raise ProtocolError("batch results are not a list")
        return [_result(v) for v in value]
    return value


def decode(frame: bytes) -> Message:
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"frame is not msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("frame is not a msgpack map")
    if body.get("v") != SCHEMA_VERSION:
        raise ProtocolError(f"unsupported schema version {body.get('v')!r}")
    kind = body.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {body.get('type')!r}")
    values: dict[str, Any] = {}
    for name, required in _field_defaults(cls):
        if name not in body:
            if required:
                raise ProtocolError(f"{cls.kind} message lacks field {name!r}")
            continue
        values[name] = _field_value(name, body[name])
    try:
        return cls(**values)
    except TypeError as exc:
        raise ProtocolError(f"bad {cls.kind} message: {exc}") from None


__all__ = [
    "SCHEMA_VERSION",
    "Accepted",
    "BatchResult",
    "Control",
    "ControlReply",
    "Deliver",
    "Goodbye",
    "Heartbeat",
    "JobHeader",
    "Message",
    "Ready",
    "Refused",
    "RelayAck",
    "RelayCancel",
    "RelayProbe",
    "RelayProgress",
    "RelayRequest",
    "RelayResponse",
    "RelayStore",
    "Result",
    "Submit",
    "decode",
    "encode",
]
