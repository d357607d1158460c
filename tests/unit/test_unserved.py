"""router/acceptor/unserved.py: the "unrecognized operation" answer to a request the router
does not serve, checked by decoding the encoded response as a peer would."""

from __future__ import annotations

from router.acceptor.unserved import unrecognized_operation
from router.dicom.engine.dimse import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    MESSAGE_ID,
    MESSAGE_ID_RESPONDED_TO,
    STATUS,
    OtherCommand,
    decode_command,
    encode_command,
)

N_ACTION_RQ, C_FIND_RQ, C_CANCEL_RQ = 0x0130, 0x0020, 0x0FFF
COMMITMENT = b"1.2.840.10008.1.20.1\0"
WELL_KNOWN = b"1.2.840.10008.1.20.1.1\0"


def us(value: int) -> bytes:
    return value.to_bytes(2, "little")


def test_a_request_gets_0211_with_its_message_id_and_sop_references() -> None:
    request = OtherCommand(N_ACTION_RQ, {MESSAGE_ID: us(7), AFFECTED_SOP_CLASS_UID: COMMITMENT,
                                         AFFECTED_SOP_INSTANCE_UID: WELL_KNOWN})
    response = unrecognized_operation(request)
    assert response is not None
    decoded = decode_command(encode_command(response))
    assert isinstance(decoded, OtherCommand) and decoded.command_field == 0x8130
    assert decoded.us(MESSAGE_ID_RESPONDED_TO) == 7 and decoded.us(STATUS) == 0x0211
    assert not decoded.has_dataset
    assert decoded.elements[AFFECTED_SOP_CLASS_UID] == COMMITMENT
    assert decoded.elements[AFFECTED_SOP_INSTANCE_UID] == WELL_KNOWN


def test_a_request_without_references_or_message_id_still_gets_an_answer() -> None:
    response = unrecognized_operation(OtherCommand(C_FIND_RQ, {}))
    assert response is not None and response.command_field == 0x8020
    assert response.us(MESSAGE_ID_RESPONDED_TO) == 0
    assert AFFECTED_SOP_CLASS_UID not in response.elements


def test_responses_and_cancels_get_none() -> None:
    assert unrecognized_operation(OtherCommand(0x8020, {STATUS: us(0)})) is None
    assert unrecognized_operation(OtherCommand(C_CANCEL_RQ, {MESSAGE_ID_RESPONDED_TO: us(3)}
                                               )) is None
