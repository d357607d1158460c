"""DIMSE command sets (PS3.7 6.3, E.1): group 0000 only, always Implicit VR Little Endian,
(0000,0000) group length first. A `struct` codec: typed values for C-STORE and C-ECHO
(the hot path), and `OtherCommand` with the raw elements for everything else, which a
caller that needs more (a relayed C-FIND, N-ACTION...) can hand to pydicom.

Strings are padded to even length: UIDs with NUL, other text with a space. Data Set Type
(0000,0800) 0x0101 means no dataset follows; responses carry Message ID Being Responded To
(0000,0120)."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from router.dicom.engine.errors import DecodeError, LocalProtocolError

VERIFICATION = "1.2.840.10008.1.1"
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0000

# Element numbers in group 0000.
GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000
MOVE_ORIGINATOR_AE = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031

C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class CStoreRQ:
    command_field: ClassVar[int] = C_STORE_RQ
    has_dataset: ClassVar[bool] = True
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    priority: int = 0  # 0 medium, 1 high, 2 low
    move_originator_ae: str = ""
    move_originator_message_id: int | None = None


@dataclass(frozen=True, slots=True)
class CStoreRSP:
    command_field: ClassVar[int] = C_STORE_RSP
    has_dataset: ClassVar[bool] = False
    message_id_responded: int
    sop_class_uid: str
    sop_instance_uid: str
    status: int
    error_comment: str = ""


@dataclass(frozen=True, slots=True)
class CEchoRQ:
    command_field: ClassVar[int] = C_ECHO_RQ
    has_dataset: ClassVar[bool] = False
    message_id: int
    sop_class_uid: str = VERIFICATION


@dataclass(frozen=True, slots=True)
class CEchoRSP:
    command_field: ClassVar[int] = C_ECHO_RSP
    has_dataset: ClassVar[bool] = False
    message_id_responded: int
    status: int
    sop_class_uid: str = VERIFICATION


@dataclass(frozen=True, slots=True)
class OtherCommand:
    """Any other command: raw values by element number of group 0000, and the encoded
    command set itself (`raw`, for pydicom when a caller needs every element)."""

    command_field: int
    elements: Mapping[int, bytes]
    raw: bytes = b""

    @property
    def has_dataset(self) -> bool:
        return self.elements.get(DATA_SET_TYPE, _US.pack(NO_DATASET)) != _US.pack(NO_DATASET)

    def us(self, element: int) -> int | None:
        value = self.elements.get(element)
        return _US.unpack(value)[0] if value is not None and len(value) == 2 else None

    def text(self, element: int) -> str | None:
        value = self.elements.get(element)
        return None if value is None else _text(value)


Command = CStoreRQ | CStoreRSP | CEchoRQ | CEchoRSP | OtherCommand


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip(" \0")


def _uid(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\0" if len(raw) % 2 else raw


# An ErrorComment is LO in the default repertoire: no control characters, no backslash (the
# value separator). What it quotes (a rule's name, pydicom's message) may hold any of them.
_NOT_LO = re.compile(r"[\x00-\x1f\x7f\\]")


def _comment(value: str) -> bytes:
    """An ErrorComment as LO: 64 characters, control characters and non-ASCII as '?'."""
    return _string(_NOT_LO.sub("?", value[:64]))


def _string(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def encode_elements(elements: Iterable[tuple[int, bytes]]) -> bytes:
    """A group-0000 command set from (element, value) pairs, group length first."""
    body = b"".join(
        _ELEMENT.pack(0, element, len(value)) + value for element, value in sorted(elements)
    )
    return _ELEMENT.pack(0, GROUP_LENGTH, 4) + struct.pack("<I", len(body)) + body


def _fields(command: Command) -> list[tuple[int, bytes]]:
    us = _US.pack
    if isinstance(command, CStoreRQ):
        fields = [
            (AFFECTED_SOP_CLASS_UID, _uid(command.sop_class_uid)),
            (COMMAND_FIELD, us(C_STORE_RQ)), (MESSAGE_ID, us(command.message_id)),
            (PRIORITY, us(command.priority)), (DATA_SET_TYPE, us(DATASET_PRESENT)),
            (AFFECTED_SOP_INSTANCE_UID, _uid(command.sop_instance_uid)),
        ]
        if command.move_originator_ae:
            fields.append((MOVE_ORIGINATOR_AE, _string(command.move_originator_ae)))
        if command.move_originator_message_id is not None:
            fields.append((MOVE_ORIGINATOR_MESSAGE_ID, us(command.move_originator_message_id)))
        return fields
    if isinstance(command, CStoreRSP):
        fields = [
            (AFFECTED_SOP_CLASS_UID, _uid(command.sop_class_uid)),
            (COMMAND_FIELD, us(C_STORE_RSP)),
            (MESSAGE_ID_RESPONDED_TO, us(command.message_id_responded)),
            (DATA_SET_TYPE, us(NO_DATASET)), (STATUS, us(command.status)),
            (AFFECTED_SOP_INSTANCE_UID, _uid(command.sop_instance_uid)),
        ]
        if command.error_comment:
            fields.append((ERROR_COMMENT, _comment(command.error_comment)))
        return fields
    if isinstance(command, CEchoRQ):
        return [(AFFECTED_SOP_CLASS_UID, _uid(command.sop_class_uid)),
                (COMMAND_FIELD, us(C_ECHO_RQ)), (MESSAGE_ID, us(command.message_id)),
                (DATA_SET_TYPE, us(NO_DATASET))]
    if isinstance(command, CEchoRSP):
        return [(AFFECTED_SOP_CLASS_UID, _uid(command.sop_class_uid)),
                (COMMAND_FIELD, us(C_ECHO_RSP)),
                (MESSAGE_ID_RESPONDED_TO, us(command.message_id_responded)),
                (DATA_SET_TYPE, us(NO_DATASET)), (STATUS, us(command.status))]
    elements = {k: v for k, v in command.elements.items() if k != GROUP_LENGTH}
    elements[COMMAND_FIELD] = us(command.command_field)
    return list(elements.items())


def encode_command(command: Command) -> bytes:
    try:
        return encode_elements(_fields(command))
    except struct.error as exc:
        raise LocalProtocolError(f"command value out of range: {exc}") from None


def decode_elements(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """Element number -> raw value; every tag must be in group 0000."""
    elements: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise DecodeError("truncated command element")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise DecodeError(f"bad command element ({group:04X},{element:04X})")
        elements[element] = bytes(data[pos : pos + length])
        pos += length
    return elements


def _need_us(elements: Mapping[int, bytes], element: int) -> int:
    value = elements.get(element)
    if value is None or len(value) != 2:
        raise DecodeError(f"command element (0000,{element:04X}) missing or not US")
    return int(_US.unpack(value)[0])


def _need_uid(elements: Mapping[int, bytes], element: int) -> str:
    value = elements.get(element)
    if value is None:
        raise DecodeError(f"command element (0000,{element:04X}) missing")
    return _text(value)


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """A command set -> its typed value; raises DecodeError (a ProtocolError)."""
    elements = decode_elements(data)
    field = _need_us(elements, COMMAND_FIELD)
    if field == C_STORE_RQ:
        if elements.get(DATA_SET_TYPE) == _US.pack(NO_DATASET):
            # PS3.7 9.3.1.1: a C-STORE-RQ's Data Set Type "shall be set to a value other
            # than 0101H". PS3.7 has no status for a request without its dataset, and
            # waiting for one that never comes would hold the association to its timeout.
            raise DecodeError("a C-STORE-RQ that says no data set follows "
                              "(Data Set Type 0x0101)")
        origin = elements.get(MOVE_ORIGINATOR_MESSAGE_ID)
        return CStoreRQ(
            _need_us(elements, MESSAGE_ID), _need_uid(elements, AFFECTED_SOP_CLASS_UID),
            _need_uid(elements, AFFECTED_SOP_INSTANCE_UID),
            _need_us(elements, PRIORITY) if PRIORITY in elements else 0,
            _text(elements.get(MOVE_ORIGINATOR_AE, b"")),
            _need_us(elements, MOVE_ORIGINATOR_MESSAGE_ID) if origin is not None else None,
        )
    if field == C_STORE_RSP:
        return CStoreRSP(
            _need_us(elements, MESSAGE_ID_RESPONDED_TO),
            _text(elements.get(AFFECTED_SOP_CLASS_UID, b"")),
            _text(elements.get(AFFECTED_SOP_INSTANCE_UID, b"")),
            _need_us(elements, STATUS), _text(elements.get(ERROR_COMMENT, b"")),
        )
    if field == C_ECHO_RQ:
        return CEchoRQ(_need_us(elements, MESSAGE_ID),
                       _text(elements.get(AFFECTED_SOP_CLASS_UID, b"")) or VERIFICATION)
    if field == C_ECHO_RSP:
        return CEchoRSP(_need_us(elements, MESSAGE_ID_RESPONDED_TO), _need_us(elements, STATUS),
                        _text(elements.get(AFFECTED_SOP_CLASS_UID, b"")) or VERIFICATION)
    return OtherCommand(field, elements, bytes(data))
