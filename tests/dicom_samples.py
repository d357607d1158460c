"""Synthetic DICOM Part 10 files for tests and benchmarks.

Files are written so that DCMTK's storescu re-encodes them byte-identically
when it sends them: no group length elements, even-length values, sequences
and items with explicit lengths, no trailing padding, and PixelData as the last
element. That lets a test compare ``dataset_digest`` of what was sent with
``dataset_digest`` of what a peer stored.

Pixel data is streamed to disk in chunks after pydicom has encoded the rest of
the dataset (rather than built in memory and passed to pydicom.encaps.encapsulate),
so a multi-frame of hundreds of megabytes costs about one chunk of RAM.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import datadict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO, DicomFileLike
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

# Transfer syntaxes the generator knows how to write.
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

NATIVE_SYNTAXES: tuple[str, ...] = (
    IMPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    DEFLATED_EXPLICIT_VR_LE,
)
ENCAPSULATED_SYNTAXES: tuple[str, ...] = (
    JPEG_BASELINE,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    RLE_LOSSLESS,
)
ALL_SYNTAXES: tuple[str, ...] = NATIVE_SYNTAXES + ENCAPSULATED_SYNTAXES

_PIXEL_DATA_TAG = 0x7FE00010
_CHUNK = 1 << 20  # pixel bytes generated and written per step
_MAX_LENGTH = 0xFFFFFFFE  # largest even defined length a DICOM element can carry


@dataclass(frozen=True)
class SampleKind:
    """One SOP class as the mixed set uses it."""

    sop_class: str
    modality: str
    frames: int = 1


# The mix: single- and multi-frame, grey and colour, several modalities.
MIXED_KINDS: tuple[SampleKind, ...] = (
    SampleKind(CTImageStorage, "CT"),
    SampleKind(MRImageStorage, "MR"),
    SampleKind(SecondaryCaptureImageStorage, "OT"),
    SampleKind(EnhancedCTImageStorage, "CT", frames=4),
    SampleKind(DigitalXRayImageStorageForPresentation, "DX"),
    SampleKind(UltrasoundImageStorage, "US"),
    SampleKind(UltrasoundMultiFrameImageStorage, "US", frames=3),
    SampleKind(MultiFrameGrayscaleWordSecondaryCaptureImageStorage, "OT", frames=2),
)

# Colour SOP classes get RGB pixels; everything else 16-bit greyscale.
_COLOUR_SOP_CLASSES = frozenset({UltrasoundImageStorage, UltrasoundMultiFrameImageStorage})
# These IODs require NumberOfFrames even with a single frame.
_MULTIFRAME_SOP_CLASSES = frozenset(
    {
        EnhancedCTImageStorage,
        UltrasoundMultiFrameImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    }
)


@dataclass(frozen=True)
class _PixelFormat:
    samples: int
    bits: int
    photometric: str

    @property
    def bytes_per_pixel(self) -> int:
        return self.samples * self.bits // 8


@dataclass(frozen=True)
class _Encoding:
    implicit_vr: bool
    little_endian: bool
    deflated: bool
    encapsulated: bool


def _encoding(transfer_syntax: str) -> _Encoding:
    if transfer_syntax == IMPLICIT_VR_LE:
        return _Encoding(True, True, False, False)
    if transfer_syntax == EXPLICIT_VR_LE:
        return _Encoding(False, True, False, False)
    if transfer_syntax == EXPLICIT_VR_BE:
        return _Encoding(False, False, False, False)
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        return _Encoding(False, True, True, False)
    if transfer_syntax in ENCAPSULATED_SYNTAXES:
        return _Encoding(False, True, False, True)
    raise ValueError(f"unsupported transfer syntax {transfer_syntax}")


def _pixel_format(sop_class: str, transfer_syntax: str) -> _PixelFormat:
    colour = sop_class in _COLOUR_SOP_CLASSES
    # JPEG Baseline only carries 8-bit samples; keep the header consistent with it.
    if transfer_syntax == JPEG_BASELINE:
        return _PixelFormat(3, 8, "YBR_FULL_422") if colour else _PixelFormat(1, 8, "MONOCHROME2")
    if colour:
        return _PixelFormat(3, 8, "RGB")
    return _PixelFormat(1, 16, "MONOCHROME2")


def _geometry(frame_bytes: int, fmt: _PixelFormat) -> tuple[int, int]:
    """Rows and columns of a roughly square frame of about frame_bytes."""
    pixels = max(4, frame_bytes // fmt.bytes_per_pixel)
    # Even column count keeps 8-bit frames at an even byte length.
    columns = min(65534, max(2, math.isqrt(pixels) // 2 * 2))
    rows = min(65535, max(1, pixels // columns))
    return rows, columns


def _base_dataset(
    *,
    sop_class: str,
    sop_instance_uid: str,
    study_uid: str,
    series_uid: str,
    modality: str,
    fmt: _PixelFormat,
    frames: int,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = modality
    ds.Manufacturer = "dicom-router tests"
    ds.ReferringPhysicianName = "Referrer^Test"
    ds.StudyDescription = "Synthetic study"
    ds.SeriesDescription = f"Synthetic {modality} series"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PAT0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = fmt.samples
    ds.PhotometricInterpretation = fmt.photometric
    if fmt.samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1 or sop_class in _MULTIFRAME_SOP_CLASSES:
        ds.NumberOfFrames = frames
    ds.Rows = 0  # set once the header size is known
    ds.Columns = 0
    ds.BitsAllocated = fmt.bits
    ds.BitsStored = fmt.bits
    ds.HighBit = fmt.bits - 1
    ds.PixelRepresentation = 0
    if sop_class == EnhancedCTImageStorage:
        # A small nested sequence, so the round trip covers sequence encoding too.
        # pydicom writes new sequences and items with explicit lengths, as does storescu.
        measures = Dataset()
        measures.PixelSpacing = [0.5, 0.5]
        measures.SliceThickness = 1.0
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
    return ds


def _apply_tags(ds: Dataset, tags: dict[str, object]) -> None:
    for keyword, value in tags.items():
        tag = datadict.tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"unknown DICOM keyword {keyword!r}")
        # PixelData is streamed after the dataset, so nothing may sort after it.
        if tag >= _PIXEL_DATA_TAG:
            raise ValueError(f"{keyword} cannot be set: it would follow PixelData")
        setattr(ds, keyword, value)


def _encode_dataset(ds: Dataset, enc: _Encoding) -> bytes:
    """The dataset (without file meta or pixel data) in the transfer syntax's encoding."""
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, implicit_vr=enc.implicit_vr, little_endian=enc.little_endian)
    return buffer.getvalue()


def _encode_file_meta(sop_class: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMROUTERTEST"
    buffer = DicomBytesIO()
    write_file_meta_info(DicomFileLike(buffer), meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


def _element_header(tag: int, vr: str, length: int, enc: _Encoding) -> bytes:
    order = "<" if enc.little_endian else ">"
    tag_bytes = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if enc.implicit_vr:
        return tag_bytes + struct.pack(order + "I", length)
    return tag_bytes + vr.encode("ascii") + b"\x00\x00" + struct.pack(order + "I", length)


def _item(length: int) -> bytes:
    # Encapsulated syntaxes are always explicit VR little endian.
    return struct.pack("<HHI", 0xFFFE, 0xE000, length)


def _random_chunks(rng: random.Random, total: int) -> Iterator[bytes]:
    left = total
    while left > 0:
        n = min(_CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def _pixel_data_stream(
    frame_bytes: int, frames: int, fmt: _PixelFormat, enc: _Encoding, rng: random.Random
) -> Iterator[bytes]:
    """PixelData element, header first, in chunks."""
    if enc.encapsulated:
        # Undefined-length OB, Basic Offset Table, one fragment per frame.
        yield _element_header(_PIXEL_DATA_TAG, "OB", 0xFFFFFFFF, enc)
        offsets = [i * (8 + frame_bytes) for i in range(frames)]
        yield _item(4 * frames) + struct.pack(f"<{frames}I", *offsets)
        for _ in range(frames):
            yield _item(frame_bytes)
            yield from _random_chunks(rng, frame_bytes)
        yield struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return
    total = frame_bytes * frames
    if total > _MAX_LENGTH:
        raise ValueError(f"native pixel data of {total} bytes exceeds a 32-bit length")
    vr = "OW" if fmt.bits > 8 else "OB"
    yield _element_header(_PIXEL_DATA_TAG, vr, total, enc)
    # Random words are as valid big endian as little endian: no swapping needed.
    yield from _random_chunks(rng, total)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _write_stream(out: BinaryIO, chunks: Iterator[bytes], deflated: bool) -> None:
    if not deflated:
        for chunk in chunks:
            out.write(chunk)
        return
    # Deflated Explicit VR LE: raw deflate (no zlib header) of the whole dataset.
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    for chunk in chunks:
        out.write(compressor.compress(chunk))
    out.write(compressor.flush())


def write_instance(
    folder: Path,
    *,
    sop_class: str,
    transfer_syntax: str,
    size_bytes: int = 10_000,
    frames: int = 1,
    modality: str = "CT",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    tags: dict[str, object] | None = None,
) -> Path:
    """Write one Part 10 instance of about size_bytes into folder; return its path.

    Native syntaxes get real (random) native pixel data; encapsulated syntaxes get
    one fragment of random bytes per frame, which nothing is expected to decode.
    For Deflated the size is that of the uncompressed dataset (random pixels do
    not compress, so the file is about as large).
    """
    if frames < 1:
        raise ValueError("frames must be >= 1")
    enc = _encoding(transfer_syntax)
    fmt = _pixel_format(sop_class, transfer_syntax)
    sop_instance_uid = sop_instance_uid or generate_uid()
    ds = _base_dataset(
        sop_class=sop_class,
        sop_instance_uid=sop_instance_uid,
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        modality=modality,
        fmt=fmt,
        frames=frames,
    )
    if tags:
        _apply_tags(ds, tags)

    meta = _encode_file_meta(sop_class, sop_instance_uid, transfer_syntax)
    # Rows/Columns are fixed-size US, so the header length is known before geometry.
    header_len = len(meta) + len(_encode_dataset(ds, enc))
    pixel_overhead = 12 + (8 + 4 * frames + 8 * frames + 8 if enc.encapsulated else 0)
    budget = max(frames * 4, size_bytes - header_len - pixel_overhead)
    rows, columns = _geometry(budget // frames, fmt)
    ds.Rows, ds.Columns = rows, columns
    frame_bytes = rows * columns * fmt.bytes_per_pixel
    frame_bytes += frame_bytes % 2  # fragments and values must have even length

    # Seed from the UID: same instance, same pixels; different instances differ.
    rng = random.Random(hashlib.sha256(sop_instance_uid.encode()).digest())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sop_instance_uid}.dcm"
    chunks = _chain(
        _encode_dataset(ds, enc), _pixel_data_stream(frame_bytes, frames, fmt, enc, rng)
    )
    with path.open("wb") as out:
        out.write(meta)
        _write_stream(out, chunks, enc.deflated)
    return path


def generate_mixed_set(
    folder: Path,
    count: int,
    *,
    size_bytes: int = 10_000,
    syntaxes: tuple[str, ...] = ALL_SYNTAXES,
    kinds: tuple[SampleKind, ...] = MIXED_KINDS,
    instances_per_series: int = 4,
    series_per_study: int = 3,
    tags: dict[str, object] | None = None,
) -> list[Path]:
    """Write count instances mixing SOP classes and transfer syntaxes; return their paths.

    The mix is deterministic: instance i uses syntaxes[i % len(syntaxes)], and each
    series (instances_per_series instances) one SOP class, cycling through kinds.
    Series are grouped into studies of series_per_study series, one patient each.
    UIDs are fresh each call, so two sets never collide at a receiver.
    """
    paths: list[Path] = []
    study_uid = series_uid = ""
    for i in range(count):
        series_index, position = divmod(i, instances_per_series)
        study_index = series_index // series_per_study
        if position == 0:
            series_uid = generate_uid()
            if series_index % series_per_study == 0:
                study_uid = generate_uid()
        kind = kinds[series_index % len(kinds)]
        instance_tags: dict[str, object] = {
            "PatientID": f"PAT{study_index:04d}",
            "PatientName": f"Test^Patient{study_index:04d}",
            "AccessionNumber": f"ACC{study_index:04d}",
            "StudyID": str(study_index + 1),
            "SeriesNumber": series_index % series_per_study + 1,
            "InstanceNumber": position + 1,
        }
        instance_tags.update(tags or {})
        paths.append(
            write_instance(
                folder,
                sop_class=kind.sop_class,
                transfer_syntax=syntaxes[i % len(syntaxes)],
                size_bytes=size_bytes,
                frames=kind.frames,
                modality=kind.modality,
                study_uid=study_uid,
                series_uid=series_uid,
                tags=instance_tags,
            )
        )
    return paths


# VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def _skip_file_meta(fp: BinaryIO) -> str:
    """Read past preamble and group 0002; return the TransferSyntaxUID."""
    head = fp.read(132)
    if len(head) != 132 or head[128:] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    transfer_syntax = ""
    while True:
        start = fp.tell()
        raw = fp.read(6)
        if len(raw) < 6:
            break
        group, element = struct.unpack("<HH", raw[:4])
        if group != 0x0002:
            fp.seek(start)
            break
        vr = raw[4:6]
        if vr in _LONG_VRS:
            fp.read(2)
            (length,) = struct.unpack("<I", fp.read(4))
        else:
            (length,) = struct.unpack("<H", fp.read(2))
        value = fp.read(length)
        if element == 0x0010:
            transfer_syntax = value.rstrip(b"\x00 ").decode("ascii")
    if not transfer_syntax:
        raise ValueError("file meta has no TransferSyntaxUID")
    return transfer_syntax


def dataset_digest(path: Path) -> str:
    """sha256 hex of the dataset after the file meta group, inflated if Deflated.

    Two tools storing the same dataset write different file meta (implementation
    UID, source AE...) and may deflate differently; the encoded dataset itself
    should be identical.
    """
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        transfer_syntax = _skip_file_meta(fp)
        inflater = (
            zlib.decompressobj(-zlib.MAX_WBITS)
            if transfer_syntax == DEFLATED_EXPLICIT_VR_LE
            else None
        )
        while chunk := fp.read(_CHUNK):
            digest.update(inflater.decompress(chunk) if inflater else chunk)
        if inflater:
            digest.update(inflater.flush())
    return digest.hexdigest()
