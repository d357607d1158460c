"""Where the dataset starts in a spooled file, and what its file meta says, read with `struct`.

The spool holds DICOM Part 10 files (128-byte preamble, "DICM", the group 0002 file meta in
Explicit VR Little Endian) as the acceptor and the transforms write them. A C-STORE sends
what follows the file meta, byte for byte, in the transfer syntax the meta names. A file
without the "DICM" marker is taken as a bare dataset from its first byte: its SOP class,
instance and transfer syntax then come from the job header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

PREAMBLE = 128
MAGIC = b"DICM"
# Explicit VR with a 4-byte length after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_TAG_VR = struct.Struct("<HH2s")
_SHORT = struct.Struct("<H")
_LONG = struct.Struct("<2xI")
MAX_META = 64 * 1024  # file meta beyond this is not a file the router wrote

MEDIA_SOP_CLASS = 0x0002
MEDIA_SOP_INSTANCE = 0x0003
TRANSFER_SYNTAX = 0x0010


class DatasetFileError(ValueError):
    """The file's meta information cannot be read: it is not what the spool holds."""


@dataclass(frozen=True, slots=True)
class DatasetFile:
    offset: int  # where the dataset starts
    size: int  # of the whole file
    sop_class_uid: str = ""  # from the file meta; "" when absent
    sop_instance_uid: str = ""
    transfer_syntax_uid: str = ""

    @property
    def dataset_length(self) -> int:
        return self.size - self.offset


def _uid(value: bytes) -> str:
    return value.decode("ascii", "replace").strip(" \0")


def read_dataset_file(fh: BinaryIO, size: int) -> DatasetFile:
    """The file meta of an open file positioned anywhere; leaves it at the dataset's start."""
    fh.seek(0)
    head = fh.read(min(size, PREAMBLE + len(MAGIC) + MAX_META))
    if head[PREAMBLE:PREAMBLE + len(MAGIC)] != MAGIC:
        fh.seek(0)
        return DatasetFile(0, size)
    pos = PREAMBLE + len(MAGIC)
    values: dict[int, bytes] = {}
    while pos + _TAG_VR.size <= len(head):
        group, element, vr = _TAG_VR.unpack_from(head, pos)
        if group != 2:
            break
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                raise DatasetFileError("truncated file meta element")
            (length,) = _LONG.unpack_from(head, pos + 6)
            start = pos + 12
        else:
            (length,) = _SHORT.unpack_from(head, pos + 6)
            start = pos + 8
        end = start + length
        if end > len(head):
            raise DatasetFileError(f"file meta element (0002,{element:04X}) runs past "
                                   f"{MAX_META} bytes or the end of the file")
        values[element] = head[start:end]
        pos = end
    fh.seek(pos)
    return DatasetFile(pos, size, _uid(values.get(MEDIA_SOP_CLASS, b"")),
                       _uid(values.get(MEDIA_SOP_INSTANCE, b"")),
                       _uid(values.get(TRANSFER_SYNTAX, b"")))
