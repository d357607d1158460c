"""The answer to a DIMSE request the router does not serve on its context (a query on a
storage context, an unknown command): "unrecognized operation" (0x0211, PS3.7 C.4), with
the request's SOP class and instance when it named them. Responses and C-CANCEL get none.
No I/O: the connection sends what this returns."""

from __future__ import annotations

from router.dicom.engine import OtherCommand
from router.dicom.engine.dimse import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    DATA_SET_TYPE,
    MESSAGE_ID,
    NO_DATASET,
    STATUS,
)
from router.dicom.engine.dimse import MESSAGE_ID_RESPONDED_TO as RESPONDED_TO

C_CANCEL_RQ = 0x0FFF
UNRECOGNIZED_OPERATION = 0x0211


def unrecognized_operation(command: OtherCommand) -> OtherCommand | None:
    """The response to send for `command`; None for a response or a C-CANCEL."""
    field = command.command_field
    if field & 0x8000 or field == C_CANCEL_RQ:
        return None
    elements = {RESPONDED_TO: (command.us(MESSAGE_ID) or 0).to_bytes(2, "little"),
                STATUS: UNRECOGNIZED_OPERATION.to_bytes(2, "little"),
                DATA_SET_TYPE: NO_DATASET.to_bytes(2, "little")}
    for copied in (AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID):  # when present
        if copied in command.elements:
            elements[copied] = command.elements[copied]
    return OtherCommand(field | 0x8000, elements)
