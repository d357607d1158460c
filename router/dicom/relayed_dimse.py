"""Relayed DIMSE requests and responses (C-FIND, C-GET, C-MOVE, N-services) between the
engine's command sets and the pynetdicom primitives the relay (router/relay/) works with.

Relayed requests are rare and small next to C-STOREs: their command sets are decoded with
pydicom and mapped onto a primitive by pynetdicom's own DIMSE message classes (internal
API, hence here in router/dicom/, behind compat.py's version check), and responses encoded
back the same way. C-STORE and C-ECHO never come this way (the engine's fast path), so both
libraries are imported with the first relayed request (first_use.py), not at the acceptor's
start.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from router.core.errors import RouterError
from router.dicom.engine import OtherCommand
from router.dicom.engine.dimse import COMMAND_FIELD, decode_elements
from router.dicom.first_use import dicom_libraries

# Request command field -> the name of pynetdicom's message class for it (dimse_messages).
REQUEST_MESSAGES: dict[int, str] = {
    0x0020: "C_FIND_RQ", 0x0010: "C_GET_RQ", 0x0021: "C_MOVE_RQ", 0x0100: "N_EVENT_REPORT_RQ",
    0x0110: "N_GET_RQ", 0x0120: "N_SET_RQ", 0x0130: "N_ACTION_RQ", 0x0140: "N_CREATE_RQ",
    0x0150: "N_DELETE_RQ",
}


class DimseDecodeError(ValueError):
    """A relayed command set pydicom cannot read."""


def request_primitive(command: OtherCommand, context_id: int, dataset: bytes | None) -> Any:
    """The pynetdicom primitive of a relayed request (its dataset as a BytesIO)."""
    try:
        dicom_libraries()
    except RouterError as exc:  # an install that pyproject.toml's pins do not allow
        raise DimseDecodeError(f"cannot be served: {exc}") from None
    from pynetdicom import dimse_messages
    from pynetdicom.dsutils import decode

    message = getattr(dimse_messages, REQUEST_MESSAGES[command.command_field])()
    try:
        message.command_set = decode(BytesIO(command.raw), True, True)
        message.data_set = BytesIO(dataset or b"")
        message.context_id = context_id
        return message.message_to_primitive()
    except Exception as exc:  # pydicom raises a variety of errors on hostile bytes
        raise DimseDecodeError(f"command set does not decode: {exc}") from None


def response_bytes(primitive: Any) -> tuple[OtherCommand, bytes]:
    """A response primitive -> the command set to send and its dataset (b"" if none)."""
    from pynetdicom import dimse_messages  # loaded with the request (request_primitive)
    from pynetdicom.dsutils import encode

    message = getattr(dimse_messages, f"{type(primitive).__name__}_RSP")()
    message.primitive_to_message(primitive)
    encoded = encode(message.command_set, True, True) or b""
    elements = decode_elements(encoded)
    field = int.from_bytes(elements[COMMAND_FIELD], "little")
    data = message.data_set.getvalue() if message.data_set else b""
    return OtherCommand(field, elements, encoded), data
