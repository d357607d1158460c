"""Really compressed DICOM test instances, for the transcoding tests.

tests/dicom_samples.py fills encapsulated syntaxes with random bytes (fine for relaying,
useless for decoding); the files here decode to a known image, ``expected_pixels``.

JPEG processes 1, 2/4, 14 and 14 SV1 are encoded by DCMTK's dcmcjpeg (pydicom has no JPEG
encoder); RLE, JPEG-LS and JPEG 2000 by pydicom's encoders by default, or by DCMTK's dcmcrle
and dcmcjpls with ``encoder="dcmtk"`` (a second, independent implementation). Every file
keeps the SOP Instance UID it was built with (DCMTK runs with ``+un``).
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from .dcmtk import require_dcmtk

# dcmcjpeg's process option per JPEG syntax; +un keeps the SOP Instance UID.
DCMCJPEG_FLAGS: dict[str, tuple[str, ...]] = {
    JPEGBaseline8Bit: ("+eb", "+un"),
    JPEGExtended12Bit: ("+ee", "+un"),
    JPEGLossless: ("+el", "+un"),
    JPEGLosslessSV1: ("+e1", "+un"),
}
_DCMTK_OTHER: dict[str, tuple[str, ...]] = {
    RLELossless: ("dcmcrle",),
    JPEGLSLossless: ("dcmcjpls", "+el", "+un"),
    JPEGLSNearLossless: ("dcmcjpls", "+en", "+un"),  # NEAR = 2
}
# pydicom encoder options; the lossy ones are what the transcoding tests expect.
PYDICOM_OPTIONS: dict[str, dict[str, Any]] = {
    RLELossless: {},
    JPEGLSLossless: {},
    JPEGLSNearLossless: {"jls_error": 2},
    JPEG2000Lossless: {},
    JPEG2000: {"j2k_cr": [10.0]},
}
LOSSY_SAMPLE_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless,
                                   JPEG2000})
PRIVATE_CREATOR = "DICOM-ROUTER TEST"
# Monochrome samples are CT: HU = pixel + RESCALE_INTERCEPT. DCMTK's lossy JPEG encoder may
# shift the stored values and the intercept together; compare HU for those.
RESCALE_INTERCEPT = -1024


def default_bits(ts: str) -> int:
    """Bits Stored a sample in ``ts`` gets by default: 8 for lossy JPEG, else CT's 12."""
    return 8 if ts in (JPEGBaseline8Bit, JPEGExtended12Bit) else 12


def expected_pixels(
    *, bits: int = 12, colour: bool = False, signed: bool = False,
    rows: int = 64, columns: int = 64, frames: int = 1,
) -> np.ndarray:
    """The image every sample holds: smooth shading plus a little fixed noise.

    Shaped as pydicom's pixel_array: ([frames,] rows, columns[, 3]), the frame axis only
    when frames > 1. Smooth enough for lossy JPEG to stay close, noisy enough that a
    lossless codec has real work.
    """
    f, y, x = np.mgrid[0:frames, 0:rows, 0:columns].astype(np.float64)
    top = float(2**bits - 1)
    noise = np.random.default_rng(7).integers(-2, 3, size=(frames, rows, columns))
    planes = []
    for phase in range(3 if colour else 1):
        shade = 0.5 + 0.4 * np.sin(x / 9 + phase) * np.cos(y / 7 - phase) + 0.02 * f
        planes.append(np.clip(np.rint(shade * top) + noise, 0, top))
    arr = np.stack(planes, axis=-1) if colour else planes[0]
    if signed:
        arr = arr - 2 ** (bits - 1)
    dtype = f"{'i' if signed else 'u'}{1 if bits <= 8 else 2}"
    return arr.astype(dtype)[0] if frames == 1 else arr.astype(dtype)


def native_dataset(
    *, bits: int = 12, colour: bool = False, signed: bool = False,
    rows: int = 64, columns: int = 64, frames: int = 1,
    tags: Mapping[str, object] | None = None,
) -> Dataset:
    """A CT-like (or, in colour, secondary capture) instance in Explicit VR Little Endian,
    with a sequence, private elements and an overlay (OW) besides the pixels."""
    if colour and bits != 8:
        raise ValueError("colour samples are 8-bit")
    arr = expected_pixels(bits=bits, colour=colour, signed=signed, rows=rows,
                          columns=columns, frames=frames)
    ds = _header(SecondaryCaptureImageStorage if colour else CTImageStorage)
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    if not colour:
        ds.RescaleIntercept = RESCALE_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
    _add_overlay(ds, rows, columns)
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
    _file_meta(ds)
    return ds


def write_native(folder: Path, name: str | None = None, **kwargs: Any) -> Path:
    """``native_dataset(**kwargs)`` saved as Explicit VR Little Endian in folder."""
    ds = native_dataset(**kwargs)
    path = folder / (name or f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path


def write_compressed(
    folder: Path,
    ts: str,
    *,
    encoder: Literal["pydicom", "dcmtk"] = "pydicom",
    bits: int | None = None,
    colour: bool = False,
    signed: bool = False,
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    tags: Mapping[str, object] | None = None,
    name: str | None = None,
) -> Path:
    """Write a CT-like instance compressed in ``ts`` to folder; return its path.

    Its pixels decode to ``expected_pixels`` with the same arguments (exactly for the
    lossless syntaxes). ``bits`` is Bits Stored, by default ``default_bits(ts)``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = native_dataset(bits=default_bits(ts) if bits is None else bits, colour=colour,
                        signed=signed, rows=rows, columns=columns, frames=frames, tags=tags)
    path = folder / (name or f"{ds.SOPInstanceUID}.dcm")
    if ts in DCMCJPEG_FLAGS or (encoder == "dcmtk" and ts in _DCMTK_OTHER):
        _with_dcmtk(ds, ts, path)
    elif ts in PYDICOM_OPTIONS:
        ds.compress(ts, generate_instance_uid=False, **PYDICOM_OPTIONS[ts])
        ds.save_as(path, enforce_file_format=True)
    else:
        raise ValueError(f"no {encoder} encoder here for {UID(ts).name} {ts}")
    return path


def _with_dcmtk(ds: Dataset, ts: str, path: Path) -> None:
    command = ("dcmcjpeg", *DCMCJPEG_FLAGS[ts]) if ts in DCMCJPEG_FLAGS else _DCMTK_OTHER[ts]
    require_dcmtk(command[0])
    native = path.with_name(f".native-{path.name}")
    ds.save_as(native, enforce_file_format=True)
    try:
        subprocess.run([*command, str(native), str(path)], check=True, capture_output=True,
                       timeout=60)
    finally:
        native.unlink(missing_ok=True)


def _header(sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "CT" if sop_class == CTImageStorage else "OT"
    ds.Manufacturer = "dicom-router tests"
    code = Dataset()
    code.CodeValue = "CTHEAD"
    code.CodingSchemeDesignator = "99TEST"
    code.CodeMeaning = "CT head"
    ds.ProcedureCodeSequence = Sequence([code])
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PAT0001"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "OB", b"\x01\x02\x03\x04")
    return ds


def _add_overlay(ds: Dataset, rows: int, columns: int) -> None:
    """A one-bit overlay in group 6000: an OW value outside the pixel data, so that a
    byte-order change that forgets it shows."""
    bits = np.zeros(rows * columns, dtype=np.uint8)
    bits[::3] = 1
    packed = np.packbits(bits, bitorder="little").tobytes()
    ds.add_new(0x60000010, "US", rows)  # Overlay Rows
    ds.add_new(0x60000011, "US", columns)  # Overlay Columns
    ds.add_new(0x60000040, "CS", "G")  # Overlay Type
    ds.add_new(0x60000050, "SS", [1, 1])  # Overlay Origin
    ds.add_new(0x60000100, "US", 1)  # Overlay Bits Allocated
    ds.add_new(0x60000102, "US", 0)  # Overlay Bit Position
    ds.add_new(0x60003000, "OW", packed + b"\x00" * (len(packed) % 2))  # Overlay Data


def _file_meta(ds: Dataset) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def write_ambiguous_implicit(folder: Path) -> Path:
    """An Implicit VR instance whose Smallest Image Pixel Value ('US or SS') cannot be
    resolved: it has no Pixel Representation."""
    ds = native_dataset(bits=16)
    ds.SmallestImagePixelValue = 0
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = folder / "ambiguous.dcm"
    ds.save_as(path, enforce_file_format=True)  # pydicom writes none without it: cut it out
    element = struct.pack("<HHIH", 0x0028, 0x0103, 2, ds.PixelRepresentation)
    data = path.read_bytes()
    assert data.count(element) == 1
    path.write_bytes(data.replace(element, b""))
    return path
