"""Variable items of the association PDUs (PS3.8 9.3.2): type (1), reserved (1),
length (2, big-endian), value; and the UID and AE title encodings they carry."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from router.dicom.engine.errors import AbortReason, DecodeError, LocalProtocolError

_ITEM_HEADER = struct.Struct(">BxH")
_MAX_ITEM_VALUE = 0xFFFF


def item(item_type: int, value: bytes) -> bytes:
    """One item; a value longer than a 16-bit length can carry is a local error."""
    if len(value) > _MAX_ITEM_VALUE:
        raise LocalProtocolError(f"item 0x{item_type:02X} value of {len(value)} bytes")
    return _ITEM_HEADER.pack(item_type, len(value)) + value


def iter_items(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each item in data, which must be filled exactly."""
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            raise DecodeError("truncated item header")
        item_type, length = _ITEM_HEADER.unpack_from(data, pos)
        pos += 4
        if pos + length > end:
            raise DecodeError(f"item 0x{item_type:02X} overruns its PDU")
        yield item_type, data[pos : pos + length]
        pos += length


def encode_uid(uid: str) -> bytes:
    """A UID as the upper layer carries it: ASCII, unpadded (PS3.8 Annex F)."""
    try:
        raw = uid.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"UID {uid!r} is not ASCII") from None
    if not raw or len(raw) > 64:
        raise LocalProtocolError(f"UID {uid!r} must have 1 to 64 characters")
    return raw


def decode_uid(value: bytes) -> str:
    """A UID from an item; a trailing NUL or space (some peers pad) is dropped."""
    return decode_text(value).rstrip("\0 ")


def decode_text(value: bytes) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("non-ASCII text", AbortReason.INVALID_PDU_PARAMETER_VALUE) from None


def encode_ae(title: str) -> bytes:
    """An AE title field: 16 bytes, space padded; 1 to 16 significant characters."""
    raw = title.strip().encode("ascii", "replace")
    if not raw or len(raw) > 16:
        raise LocalProtocolError(f"AE title {title!r} must have 1 to 16 characters")
    return raw.ljust(16, b" ")


def decode_ae(value: bytes) -> str:
    """Leading and trailing spaces are insignificant (PS3.5 AE)."""
    return decode_text(value).strip(" \0")


def u16(value: bytes) -> int:
    if len(value) != 2:
        raise DecodeError(f"expected 2 bytes, got {len(value)}")
    return int.from_bytes(value, "big")
