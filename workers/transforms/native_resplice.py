"""Explicit <-> Implicit VR Little Endian without reading the pixel data.

A PACS that takes Implicit VR only (many older ones) gets every Explicit VR instance
transcoded. The codec process reads the whole dataset for that, so an instance past
`transcode_max_decoded_bytes` is not decoded whole (decoded_size.py). Between these two
syntaxes the pixel data's value bytes are the same (little endian both, native): only the attributes
before it and its own element header change. So such an instance is written as pixel_splice
writes a morph: the attributes read and written in the new encoding, then the pixel data's
header in that encoding, then its value copied from the spooled file in the kernel. Memory
stays flat whatever the size. When the pixel data is not the last element of the file, or
its length is undefined (not native), the file is not converted here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from workers.transforms.pixel_splice import LONG_VRS, UNDEFINED_LENGTH, copy_range, read_head

LITTLE_ENDIAN_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_FIXED_VRS = {0x7FE00008: b"OF", 0x7FE00009: b"OD"}  # Float / Double Float Pixel Data


def resplice_target(source_ts: str, accepted: Sequence[str]) -> str | None:
    """The first syntax of `accepted` this module can write `source_ts` in, or None."""
    if source_ts not in LITTLE_ENDIAN_NATIVE:
        return None
    return next((ts for ts in accepted if ts in LITTLE_ENDIAN_NATIVE and ts != source_ts),
                None)


def resplice(source: Path, target: Path, target_ts: str) -> bool:
    """Write `source` to `target` in `target_ts` (Explicit or Implicit VR Little Endian),
    its pixel data copied byte for byte; False, writing nothing, when the file does not
    allow it (see the module docstring)."""
    with source.open("rb") as fh:
        ds, tail = read_head(fh)
        implicit, little = ds.original_encoding
        if tail is None or not little or implicit is None:
            return False
        fh.seek(tail.offset)
        head = fh.read(12)
        tag = int.from_bytes(head[0:2], "little") << 16 | int.from_bytes(head[2:4], "little")
        if implicit:
            (length,) = struct.unpack_from("<I", head, 4)
            value_at = tail.offset + 8
        else:
            if head[4:6] not in LONG_VRS:
                return False
            (length,) = struct.unpack_from("<I", head, 8)
            value_at = tail.offset + 12
        if length == UNDEFINED_LENGTH or value_at + length != tail.offset + tail.length:
            return False
        bits = int(ds.get("BitsAllocated") or 16)
        vr = _FIXED_VRS.get(tag, b"OW" if bits > 8 else b"OB")
        ds.file_meta.TransferSyntaxUID = UID(target_ts)
        try:
            with target.open("wb") as out:
                ds.save_as(out, enforce_file_format=True)
                out.write(head[0:4])
                if target_ts == ImplicitVRLittleEndian:
                    out.write(struct.pack("<I", length))
                else:
                    out.write(vr + b"\0\0" + struct.pack("<I", length))
                out.flush()
                copy_range(fh, out, value_at, length)
        except BaseException:
            target.unlink(missing_ok=True)  # no half-written copy where a whole one was
            raise
    return True
