"""What the engine tells its caller (receive side) and what the caller asks it to send.

Receive side: each `receive_data` call returns these, in order. `DataFragment.data` is a
memoryview of the bytes passed to that call (no copy): write it out or copy it before
reusing the buffer it points into.

Send side: `Association.send` takes the PDU values of associate.py and pdus.py
(AssociateRQ/AC/RJ, ReleaseRQ, ReleaseRP, Abort) and the two below."""

from __future__ import annotations

from dataclasses import dataclass

from router.dicom.engine.associate import AssociateAC, AssociateRJ, AssociateRQ
from router.dicom.engine.dimse import Command


@dataclass(frozen=True, slots=True)
class AssociationRequested:
    """An A-ASSOCIATE-RQ arrived (acceptor, Sta3): answer with send(AssociateAC/RJ)."""

    rq: AssociateRQ


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    ac: AssociateAC


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    """The peer rejected the association: close the transport."""

    rj: AssociateRJ


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A whole command set (it may have spanned several PDVs). When
    command.has_dataset, DataFragments on the same context follow, the last with last=True."""

    context_id: int
    command: Command


@dataclass(frozen=True, slots=True)
class DataFragment:
    context_id: int
    data: memoryview | bytes
    last: bool


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """Answer with send(ReleaseRP()) (after any outstanding responses). collision: both
    ends asked at once (PS3.8 Sta9/Sta10)."""

    collision: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseConfirmed:
    """The peer answered our A-RELEASE-RQ: close the transport (unless collision on the
    acceptor side, which still owes its A-RELEASE-RP)."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """The peer sent A-ABORT: close the transport."""

    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class ProviderAborted:
    """A-P-ABORT: the transport failed or closed in the middle of the association."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The transport closed where that is normal (before an RQ, or after our RJ/RP/abort)."""


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The ARTIM timer expired (Sta2 or Sta13): close the transport."""


Event = (
    AssociationRequested | AssociationAccepted | AssociationRejected | CommandReceived
    | DataFragment | ReleaseRequested | ReleaseConfirmed | Aborted | ProviderAborted
    | ConnectionClosed | TimedOut
)


@dataclass(frozen=True, slots=True)
class SendCommand:
    context_id: int
    command: Command


@dataclass(frozen=True, slots=True)
class SendData:
    """A piece of the dataset; last=True on the final one. Pieces of any size: the engine
    cuts them to the peer's maximum PDU length."""

    context_id: int
    data: bytes | memoryview
    last: bool = True
