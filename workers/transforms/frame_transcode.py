"""Transcoding one frame at a time: a multi-frame too large to decode whole.

A whole-slide image, a long cine or a tomosynthesis multi-frame can decode to more than
`transcode_max_decoded_bytes`; transcode.py, which decodes the whole pixel data, would need
about three times that. Here the spooled file is read up to its pixel data, the other
elements are written in the target syntax, and the frames follow one at a time: read from
the file, decoded, encoded (or, for a native target, their bytes) and appended, so that the
peak is about one decoded frame plus one encoded frame, whatever the number of frames.

What it writes: Pixel Data of defined length, computed from the header, for a native target;
for an encapsulated one, undefined length with an empty Basic Offset Table and one fragment
per frame (PS3.5 A.4). The header changes as transcode.py's: the file meta's Transfer Syntax
UID, the Photometric Interpretation and Planar Configuration the decoder gives (a YBR JPEG
becomes RGB, a native YBR_FULL_422 YBR_FULL), no Extended Offset Table, and a lossy source's
history (lossy_history.py).

Pairs: a little endian native or an encapsulated source (any syntax pydicom decodes) to
Explicit or Implicit VR Little Endian, RLE Lossless, JPEG-LS Lossless or JPEG 2000 Lossless.
Not: lossy targets, Big Endian, Deflated, bit-packed (1-bit) frames, Float Pixel Data, and a
file whose pixel data is not its last element (what follows it would be lost).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from router.core.header_tags import UNREADABLE
from workers.transforms.dataset_checks import UnfitDataset, check_nesting, readable
from workers.transforms.lossy_history import SOURCE_LOSSY_METHODS, mark_lossy_source
from workers.transforms.pixel_splice import UNDEFINED_LENGTH, pixel_tail
from workers.transforms.transcode import is_lossless
from workers.transforms.transcode_error import TranscodeError

NATIVE_TARGETS = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
FRAME_TARGETS = NATIVE_TARGETS | frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless})
_NATIVE_SOURCES = NATIVE_TARGETS
_PIXEL_DATA = 0x7FE00010
_PIXEL_HEADER = struct.pack("<HH", 0x7FE0, 0x0010)
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_EXTENDED_OFFSET_KEYWORDS = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")
_READ_ERRORS = (*UNREADABLE, ValueError, KeyError, EOFError, UnfitDataset)


def by_frame_supported(source_ts: str, target_ts: str) -> bool:
    """Whether ``write_by_frame`` can write ``source_ts`` as ``target_ts`` (the module
    docstring): syntaxes alone, the image may still be refused."""
    source = UID(source_ts)
    if target_ts not in FRAME_TARGETS or target_ts == source_ts or \
            not source.is_transfer_syntax:  # (a private syntax: pydicom cannot tell)
        return False
    return source in _NATIVE_SOURCES or (source.is_encapsulated and source.is_little_endian)


def read_head(source: Path) -> Dataset:
    """The instance's elements before its pixel data (what decides the encoders' order)."""
    try:
        with readable():
            return dcmread(source, stop_before_pixels=True)
    except _READ_ERRORS as exc:
        raise TranscodeError(f"cannot read {source.name} as DICOM: {exc}") from exc


def write_by_frame(source: Path, target: Path, target_ts: str, plugin: str = "") -> None:
    """Write ``source`` to ``target`` in ``target_ts``, one frame in memory at a time, with
    encoder ``plugin`` ("": pydicom's choice). Raises TranscodeError (a pair or an image
    this module cannot write, a codec's failure); OSError for I/O. No partial target."""
    with source.open("rb") as fh:
        head, value_at, stored = _head(fh, source, target_ts)
        source_ts = str(head.file_meta.TransferSyntaxUID)
        frames, first = _decoded_frames(fh, head, value_at, source_ts)
        try:
            with target.open("wb") as out:
                _write_head(head, out, (source_ts, target_ts), first, stored)
                _write_pixels(out, itertools.chain([first], frames), head, target_ts,
                              _encoder_options(head, first[1]), plugin)
        except BaseException:
            target.unlink(missing_ok=True)
            raise


def _name(ts: str) -> str:
    name = UID(ts).name
    return ts if name == ts else f"{name} {ts}"


def _head(fh: BinaryIO, source: Path, target_ts: str) -> tuple[Dataset, int, int]:
    """The elements before the pixel data, where its value starts in the file, and its
    length there; TranscodeError if this module cannot write it in `target_ts`."""
    try:
        with readable():
            head = dcmread(fh, stop_before_pixels=True)
            check_nesting(head)
    except _READ_ERRORS as exc:
        raise TranscodeError(f"cannot read {source.name} as DICOM: {exc}") from exc
    source_ts = str(head.file_meta.get("TransferSyntaxUID", ""))
    if not by_frame_supported(source_ts, target_ts):
        raise TranscodeError(f"frame-by-frame transcoding cannot write "
                             f"{_name(source_ts)} as {_name(target_ts)}")
    tail = pixel_tail(fh, head)
    if tail is None:
        raise TranscodeError("frame-by-frame transcoding needs the Pixel Data element last "
                             "in the file, and it is not (or the file is deflated)")
    fh.seek(tail.offset)
    tag, vr, length, value_at = _element_header(fh, head.original_encoding[0])
    if tag != _PIXEL_DATA:
        raise TranscodeError("frame-by-frame transcoding does not write Float Pixel Data")
    if int(head.get("BitsAllocated") or 0) % 8:
        raise TranscodeError("frame-by-frame transcoding needs whole bytes per pixel "
                             "(Bits Allocated 1 packs frames across bytes)")
    if (length == UNDEFINED_LENGTH) != UID(source_ts).is_encapsulated:
        raise TranscodeError(f"its Pixel Data ({vr or 'implicit VR'}, length {length}) does "
                             "not match its transfer syntax")
    return head, value_at, tail.offset + tail.length - value_at


def _element_header(fh: BinaryIO, implicit: bool | None) -> tuple[int, str, int, int]:
    """(tag, VR, length, where the value starts) of the little endian element at fh."""
    at = fh.tell()
    head = fh.read(12)
    group, element = struct.unpack_from("<HH", head)
    if implicit:
        return group << 16 | element, "", struct.unpack_from("<I", head, 4)[0], at + 8
    return (group << 16 | element, head[4:6].decode("ascii", "replace"),
            struct.unpack_from("<I", head, 8)[0], at + 12)


_Frame = tuple[Any, dict[str, Any]]  # (numpy array, pydicom's pixel properties)


def _decoded_frames(fh: BinaryIO, head: Dataset, value_at: int,
                    source_ts: str) -> tuple[Iterator[_Frame], _Frame]:
    """The frames, decoded one at a time by the first plugin that decodes the first frame
    (tried one at a time, as transcode._decode does), and that first frame."""
    decoder = get_decoder(source_ts)
    options = as_pixel_options(head, transfer_syntax_uid=UID(source_ts),
                               pixel_keyword="PixelData")
    count = int(options.get("number_of_frames") or 1)
    if not UID(source_ts).is_encapsulated:
        frames = _counted(_native_frames(fh, decoder, value_at, options, count), count)
        return frames, next(frames)
    plugins = decoder.available_plugins
    if not plugins:
        raise TranscodeError(f"cannot decode {_name(source_ts)}: no decoder is installed")
    failures = []
    for plugin in plugins:
        fh.seek(value_at)
        frames = _counted(_named_failure(decoder.iter_array(fh, decoding_plugin=plugin,
                                                            **options), plugin, source_ts,
                                         count), count)
        try:
            return frames, next(frames)
        except TranscodeError:
            raise
        except Exception as exc:  # plugins raise anything from ValueError to RuntimeError
            failures.append(f"{plugin or 'pydicom'}: {exc}".splitlines()[-1])
    raise TranscodeError(f"cannot decode {_name(source_ts)}: every installed decoder failed "
                         f"({'; '.join(failures)})")


def _named_failure(frames: Iterator[_Frame], plugin: str, source_ts: str,
                   count: int) -> Iterator[_Frame]:
    """`frames`, a frame past the first that does not decode named: pydicom says "exceptions
    were raised by all available plugins" though only `plugin`, the one that decoded the
    first frame, was tried (a first frame's failure is _decoded_frames' to try the next)."""
    n = 0
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # plugins raise anything from ValueError to RuntimeError
            if n == 0 or isinstance(exc, TranscodeError):
                raise
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            cause = lines[-1].removeprefix(f"{plugin}: ") if lines else type(exc).__name__
            raise TranscodeError(
                f"cannot decode frame {n + 1} of {count} of its {_name(source_ts)} pixel "
                f"data with {plugin}, the decoder of its first frame: {cause}") from exc
        n += 1
        yield frame


def _native_frames(fh: BinaryIO, decoder: Any, value_at: int, options: dict[str, Any],
                   count: int) -> Iterator[_Frame]:
    """A native source's frames, each read from the file and decoded alone, as it is (raw,
    as transcode.py copies native pixel data). Not pydicom's iter_array over the file: past
    the first frame of a YBR_FULL_422 one (two bytes a pixel) it reads at the offsets of
    expanded frames (three), the wrong pixels and then none."""
    size = int(options["rows"]) * int(options["columns"]) * int(options["bits_allocated"]) \
        // 8 * (2 if options["photometric_interpretation"] == "YBR_FULL_422"
                 else int(options["samples_per_pixel"]))
    one = {**options, "number_of_frames": 1}
    for index in range(count):
        fh.seek(value_at + index * size)
        data = fh.read(size)
        if len(data) < size:
            return  # _counted says how many there were
        yield decoder.as_array(data, raw=True, **one)


def _counted(frames: Iterator[_Frame], count: int) -> Iterator[_Frame]:
    """Exactly `count` frames (a JPEG stream may yield more, a damaged file fewer)."""
    n = 0
    for frame in itertools.islice(frames, count):
        n += 1
        yield frame
    if n < count:
        raise TranscodeError(f"its pixel data holds {n} frames, not the {count} of its "
                             "Number of Frames")


def _write_head(head: Dataset, out: BinaryIO, syntaxes: tuple[str, str], first: _Frame,
                stored: int) -> None:
    """The file meta and every element before the pixel data, as the target needs them
    (`stored`: the source's pixel data value's length, for a lossy source's ratio)."""
    source_ts, target_ts = syntaxes
    properties = first[1]
    head.PhotometricInterpretation = properties["photometric_interpretation"]
    if int(properties["samples_per_pixel"]) > 1:
        head.PlanarConfiguration = 0  # decoded frames are interleaved
    for keyword in _EXTENDED_OFFSET_KEYWORDS:  # they described the source's fragments
        head.pop(keyword, None)
    if not is_lossless(source_ts):  # the syntax was the only record of it, maybe
        mark_lossy_source(head, _decoded_size(head) / max(1, stored),
                          SOURCE_LOSSY_METHODS.get(source_ts, ""))
    head.file_meta.TransferSyntaxUID = UID(target_ts)
    try:
        dcmwrite(out, head, enforce_file_format=True)
    except (ValueError, OverflowError, *UNREADABLE) as exc:
        raise TranscodeError(f"cannot write the instance in {_name(target_ts)}: "
                             f"{exc}") from exc


def _write_pixels(out: BinaryIO, frames: Iterator[_Frame], head: Dataset, target_ts: str,
                  options: dict[str, Any], plugin: str) -> None:
    dtype = _dtype(head)
    if target_ts in NATIVE_TARGETS:
        length = _frame_bytes(head) * int(options["number_of_frames_total"])
        if length + length % 2 >= UNDEFINED_LENGTH:
            raise TranscodeError(f"its pixel data ({length} bytes) is too large for a native "
                                 "syntax's 32-bit length")
        _native_header(out, target_ts, length + length % 2, int(head.BitsAllocated))
        expected = _frame_bytes(head)
        for index, (arr, _) in enumerate(frames, start=1):
            data = arr.astype(dtype, copy=False).tobytes()
            if len(data) != expected:  # the length written above would lie: a corrupt file
                raise TranscodeError(f"frame {index} decoded to {len(data)} bytes, not the "
                                     f"{expected} its Rows, Columns, Samples per Pixel and "
                                     "Bits Allocated say")
            out.write(data)
        out.write(b"\0" * (length % 2))
        return
    encoder = get_encoder(target_ts)
    frame_options = {k: v for k, v in options.items() if k != "number_of_frames_total"}
    out.write(_PIXEL_HEADER + b"OB\0\0" + struct.pack("<I", UNDEFINED_LENGTH))
    out.write(_ITEM + struct.pack("<I", 0))  # an empty Basic Offset Table
    for arr, _ in frames:
        try:
            encoded = encoder.encode(arr.astype(dtype, copy=False),
                                     encoding_plugin=plugin, **frame_options)
        except Exception as exc:  # a bit depth or colour space the encoder cannot take
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise TranscodeError(f"cannot encode this image as {_name(target_ts)}: "
                                 f"{lines[-1] if lines else type(exc).__name__}") from exc
        pad = len(encoded) % 2
        out.write(_ITEM + struct.pack("<I", len(encoded) + pad))
        out.write(encoded)
        out.write(b"\0" * pad)
    out.write(_SEQUENCE_END)


def _native_header(out: BinaryIO, target_ts: str, length: int, bits_allocated: int) -> None:
    if target_ts == ImplicitVRLittleEndian:
        out.write(_PIXEL_HEADER + struct.pack("<I", length))
    else:
        vr = b"OW" if bits_allocated > 8 else b"OB"
        out.write(_PIXEL_HEADER + vr + b"\0\0" + struct.pack("<I", length))


def _encoder_options(head: Dataset, properties: dict[str, Any]) -> dict[str, Any]:
    """What pydicom's encoders need to encode one decoded frame."""
    samples = int(properties["samples_per_pixel"])
    options = {
        "rows": int(head.Rows), "columns": int(head.Columns), "samples_per_pixel": samples,
        "bits_allocated": int(head.BitsAllocated),
        "bits_stored": int(head.get("BitsStored") or head.BitsAllocated),
        "pixel_representation": int(head.get("PixelRepresentation") or 0),
        "photometric_interpretation": str(properties["photometric_interpretation"]),
        "number_of_frames": 1,
        "number_of_frames_total": int(head.get("NumberOfFrames") or 1),
    }
    if samples > 1:
        options["planar_configuration"] = 0
    return options


def _dtype(head: Dataset) -> str:
    signed = int(head.get("PixelRepresentation") or 0) == 1
    return f"<{'i' if signed else 'u'}{int(head.BitsAllocated) // 8}"


def _frame_bytes(head: Dataset) -> int:
    return int(head.Rows) * int(head.Columns) * int(head.get("SamplesPerPixel") or 1) * \
        int(head.BitsAllocated) // 8


def _decoded_size(head: Dataset) -> int:
    return _frame_bytes(head) * int(head.get("NumberOfFrames") or 1)
