"""The engine's exceptions, each carrying the answer PS3.8 prescribes.

`ProtocolError` is the only exception the engine raises. `RemoteProtocolError` means the
peer broke the protocol: the engine has already moved to Sta13 (awaiting close, ARTIM
running) and `to_send` holds the A-ABORT (or A-ASSOCIATE-RJ) PDU the caller must write
before closing. `LocalProtocolError` means the caller asked for something the current
state forbids (or a value that cannot be encoded): nothing changed, nothing to send.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.dicom.engine.events import Event


class AbortSource(IntEnum):
    """A-ABORT source (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    """A-ABORT reason/diag. when the source is the service provider (PS3.8 Table 9-26)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class ProtocolError(Exception):
    """Base of everything the engine raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LocalProtocolError(ProtocolError):
    """The caller's request is not allowed now, or cannot be encoded. State unchanged."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. `to_send`: the PDU to answer with (A-ABORT or
    A-ASSOCIATE-RJ); `events`: what the same receive_data call decoded before the error.
    `cause`: what was wrong (an AbortReason), even where the A-ABORT may not say it (before
    the association, PS3.8 AA-1 sends "not specified"); `limit`: which of the engine's
    limits was passed ("pdu": a declared PDU length, "command": a command set), if any."""

    def __init__(
        self,
        message: str,
        *,
        abort_source: int = AbortSource.SERVICE_PROVIDER,
        abort_reason: int = AbortReason.NOT_SPECIFIED,
        to_send: bytes = b"",
        cause: int | None = None,
        limit: str = "",
    ) -> None:
        super().__init__(message)
        self.abort_source = abort_source
        self.abort_reason = abort_reason
        self.cause = abort_reason if cause is None else cause
        self.limit = limit
        self.to_send = to_send
        self.events: list[Event] = []

    @property
    def rejected(self) -> bool:
        """The answer is an A-ASSOCIATE-RJ (PDU type 0x03), not an A-ABORT."""
        return self.to_send[:1] == b"\x03"


class DecodeError(ProtocolError):
    """Bytes that do not parse (a PDU body, an item, a command set), raised by the codecs;
    the engine turns it into a RemoteProtocolError with this A-ABORT reason (and `limit`)."""

    def __init__(self, message: str, reason: int = AbortReason.INVALID_PDU_PARAMETER_VALUE,
                 limit: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.limit = limit
