"""Rewrite an instance's attributes with its pixel data left on disk.

Morphing and de-identification change attributes, never the pixel data. Read whole by
pydicom, the pixel data was held twice while the copy was written (its value, then the
write's): a 500 MB instance took 1 GB of the worker, a 4 GB whole-slide image 8 GB, per
delivery thread. So the dataset is read up to its pixel data (`stop_before_pixels`),
changed and written, and the pixel data element is then copied from the source file byte
for byte (in the kernel, `copy_file_range`). That is the same encoding, since the transfer
syntax is kept. It holds when the pixel data element is the last of the file and the
dataset is not deflated (a deflated stream cannot be cut): otherwise the whole dataset is
read, as before, because what follows the pixel data (a Digital Signatures Sequence) may be
what a de-identification must remove.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

# Float, Double Float and (plain) Pixel Data: where stop_before_pixels stops.
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"UN"})
UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_SEQUENCE_END = 0xFFFEE0DD
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class PixelTail:
    """The pixel data element's bytes in the source file: from `offset` to its end."""

    offset: int
    length: int


def read_head(fh: BinaryIO) -> tuple[Dataset, PixelTail | None]:
    """The dataset of the open file `fh` without its pixel data, and where that lies, when
    the pixel data element ends the file; otherwise the whole dataset and None."""
    fh.seek(0)
    ds = dcmread(fh, stop_before_pixels=True)
    # Deflated, pydicom read an inflated copy: the file's position says nothing.
    if ds.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        if fh.tell() >= os.fstat(fh.fileno()).st_size:
            return ds, None  # no pixel data: the head is the whole dataset
        if (tail := pixel_tail(fh, ds)) is not None:
            return ds, tail
    fh.seek(0)
    return dcmread(fh), None


def pixel_tail(fh: BinaryIO, ds: Dataset) -> PixelTail | None:
    """Where the pixel data element at `fh`'s position lies, `ds` being what precedes it
    (read with `stop_before_pixels`, not deflated), if that element ends the file."""
    offset, size = fh.tell(), os.fstat(fh.fileno()).st_size
    implicit, little = ds.original_encoding
    if implicit is None or little is None or \
            not _ends_file(fh, offset, size, implicit=implicit, little=little):
        return None
    return PixelTail(offset, size - offset)


def _ends_file(fh: BinaryIO, offset: int, size: int, *, implicit: bool,
               little: bool) -> bool:
    """Whether the element at `offset` is pixel data that ends exactly at `size` (its
    fragments walked by their headers, never read)."""
    order = "<" if little else ">"
    fh.seek(offset)
    head = fh.read(12)
    if len(head) < 12:
        return False
    group, element = struct.unpack_from(f"{order}HH", head)
    if group << 16 | element not in PIXEL_TAGS:
        return False
    if not implicit and head[4:6] not in LONG_VRS:
        return False
    start = offset + (8 if implicit else 12)
    length: int = struct.unpack_from(f"{order}I", head, start - offset - 4)[0]
    if length != UNDEFINED_LENGTH:
        return start + length == size
    position = start
    while position + 8 <= size:
        fh.seek(position)
        group, element, length = struct.unpack(f"{order}HHI", fh.read(8))
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return position + 8 == size
        if tag != _ITEM or length == UNDEFINED_LENGTH:
            return False
        position += 8 + length
    return False


def write_spliced(ds: Dataset, source: BinaryIO, tail: PixelTail | None,
                  target: BinaryIO) -> None:
    """Write `ds` as a Part 10 file to `target`, then the source's pixel data after it."""
    ds.save_as(target, enforce_file_format=True)
    if tail is None:
        return
    target.flush()
    copy_range(source, target, tail.offset, tail.length)


def copy_range(source: BinaryIO, target: BinaryIO, offset: int, length: int) -> None:
    src, dst = source.fileno(), target.fileno()
    try:
        while length:
            copied = os.copy_file_range(src, dst, length, offset)
            if copied == 0:
                raise OSError(f"the source ended {length} bytes early")
            offset += copied
            length -= copied
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        source.seek(offset)  # a filesystem without it: through a buffer, a block at a time
        target.seek(0, os.SEEK_END)
        _copy_blocks(source, target, length)


def _copy_blocks(source: BinaryIO, target: BinaryIO, length: int) -> None:
    while length:
        block = source.read(min(_COPY_BLOCK, length))
        if not block:
            raise OSError(f"the source ended {length} bytes early")
        target.write(block)
        length -= len(block)
    target.flush()
