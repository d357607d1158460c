"""router/dicom/engine command sets: the struct codec against pydicom's encoding of the same
command set (Implicit VR LE, group length first, UIDs NUL-padded, text space-padded)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from router.dicom.engine import (
    CEchoRQ,
    CEchoRSP,
    Command,
    CStoreRQ,
    CStoreRSP,
    DecodeError,
    OtherCommand,
    decode_command,
    encode_command,
)
from router.dicom.engine.dimse import encode_elements

CT = "1.2.840.10008.5.1.4.1.1.2"
ODD_UID = "1.2.3.4.5"  # odd length: padded with NUL


def _pydicom(**elements: object) -> bytes:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    raw = body.getvalue()
    group = Dataset()
    group.CommandGroupLength = len(raw)
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, True
    write_dataset(head, group)
    return head.getvalue() + raw


CASES: list[tuple[Command, bytes]] = [
    (CStoreRQ(7, CT, ODD_UID, priority=2),
     _pydicom(AffectedSOPClassUID=CT, CommandField=1, MessageID=7, Priority=2,
              CommandDataSetType=0, AffectedSOPInstanceUID=ODD_UID)),
    (CStoreRQ(8, CT, "1.2", move_originator_ae="MOVER", move_originator_message_id=3),
     _pydicom(AffectedSOPClassUID=CT, CommandField=1, MessageID=8, Priority=0,
              CommandDataSetType=0, AffectedSOPInstanceUID="1.2",
              MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=3)),
    (CStoreRSP(7, CT, ODD_UID, 0x0000),
     _pydicom(AffectedSOPClassUID=CT, CommandField=0x8001, MessageIDBeingRespondedTo=7,
              CommandDataSetType=0x0101, Status=0, AffectedSOPInstanceUID=ODD_UID)),
    (CStoreRSP(9, CT, ODD_UID, 0xA700, "Out of resources"),
     _pydicom(AffectedSOPClassUID=CT, CommandField=0x8001, MessageIDBeingRespondedTo=9,
              CommandDataSetType=0x0101, Status=0xA700, ErrorComment="Out of resources",
              AffectedSOPInstanceUID=ODD_UID)),
    (CEchoRQ(1),
     _pydicom(AffectedSOPClassUID="1.2.840.10008.1.1", CommandField=0x30, MessageID=1,
              CommandDataSetType=0x0101)),
    (CEchoRSP(1, 0),
     _pydicom(AffectedSOPClassUID="1.2.840.10008.1.1", CommandField=0x8030,
              MessageIDBeingRespondedTo=1, CommandDataSetType=0x0101, Status=0)),
]


@pytest.mark.parametrize(("command", "theirs"), CASES, ids=lambda c: type(c).__name__)
def test_fast_path_is_byte_identical_to_pydicom(command: Command, theirs: bytes) -> None:
    assert encode_command(command) == theirs
    assert decode_command(theirs) == command


def test_padding_rules() -> None:
    raw = encode_command(CStoreRSP(1, CT, ODD_UID, 0, "odd"))
    assert ODD_UID.encode() + b"\0" in raw and b"odd " in raw


def test_an_error_comment_is_lo_whatever_it_quotes() -> None:
    """Regression: a reject rule's name went raw into the 0xC004 ErrorComment: a newline, a
    bell and a backslash (LO's value separator) reached the sender's log."""
    name = "line\nbreak\x07bell\\x-R\u00f6ntgen"
    decoded = decode_command(encode_command(CStoreRSP(1, CT, ODD_UID, 0xC004,
                                                      f"refused by rule {name}")))
    assert isinstance(decoded, CStoreRSP)
    assert decoded.error_comment == "refused by rule line?break?bell?x-R?ntgen"


def test_other_commands_come_back_as_raw_elements() -> None:
    raw = _pydicom(AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1", CommandField=0x20,
                   MessageID=5, Priority=0, CommandDataSetType=0x0001)
    command = decode_command(raw)
    assert isinstance(command, OtherCommand)
    assert command.command_field == 0x20 and command.has_dataset
    assert command.us(0x0110) == 5
    assert command.text(0x0002) == "1.2.840.10008.5.1.4.1.2.2.1"
    assert command.raw == raw
    assert encode_command(command) == raw  # re-encodes as it came


def test_no_dataset_type() -> None:
    command = decode_command(encode_elements([(0x0100, b"\x30\x00"), (0x0110, b"\x01\x00"),
                                              (0x0800, b"\x01\x01")]))
    assert not command.has_dataset


@pytest.mark.parametrize("raw", [
    b"\x00\x00\x00\x00\x04\x00",  # truncated element
    b"\x08\x00\x00\x00\x02\x00\x00\x00ab",  # group 0008
    encode_elements([(0x0110, b"\x01\x00")]),  # no command field
    encode_elements([(0x0100, b"\x01\x00"), (0x0110, b"\x01\x00")]),  # C-STORE-RQ without UIDs
    # A C-STORE-RQ whose Data Set Type says no dataset follows (PS3.7 9.3.1.1 forbids it).
    encode_elements([(0x0002, b"1.2\0"), (0x0100, b"\x01\x00"), (0x0110, b"\x01\x00"),
                     (0x0800, b"\x01\x01"), (0x1000, b"1.3\0")]),
    b"\x00\x00\x00\x01\xff\xff\xff\xff",  # length past the end
])
def test_bad_command_sets_are_decode_errors(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_command(raw)
