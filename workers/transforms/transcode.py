"""Transcoding: rewrite an instance in a transfer syntax a destination accepts.

The router forwards instances as received. It transcodes only when a destination accepts
none of the syntaxes an instance could be sent in as-is, so the cost below is paid only when
a destination forces it:

* Memory: the whole dataset is read, and compressed pixel data is decoded in full, before
  anything is written: a multi-frame's decoded frames, a joined copy of them and the
  re-encoded frames are all in RAM at once. Measured peak: about three times the decoded
  size (a 50 MB decoded multi-frame took ~150 MB above the worker's baseline), so a 1 GB
  cine needs about 3 GB. The worker sends one past transcode_max_decoded_bytes elsewhere
  before it gets here: frame by frame (frame_transcode.py) or to a dead letter
  (decoded_size.py).
* Fidelity: lossless targets reproduce the decoded pixels exactly. Lossy targets are never
  chosen automatically (see ``choose_target``); ``transcode_file`` produces one only when the
  caller passes ``allow_lossy=True``. Either way the lossy history stays (lossy_history.py).

Everything else in the dataset is kept: SOP Instance UID and every non-pixel element, except
what decoding must change (a YBR JPEG becomes RGB, with its Planar Configuration), group
length elements (retired; pydicom never writes them, and their values would be wrong in the
new encoding anyway) and, for lossy targets and sources, the Lossy Image Compression elements.
The file meta follows the new syntax.

Codecs come from pydicom's pixel plugins (pydicom.pixels): which syntaxes can be decoded and
encoded depends on the packages installed; ``can_decode`` and ``can_encode`` ask pydicom.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from router.core.header_tags import UNREADABLE
from workers.transforms.byte_order import set_byte_order
from workers.transforms.dataset_checks import UnfitDataset, check_nesting, readable
from workers.transforms.lossy_history import (
    LOSSY_METHODS,
    SOURCE_LOSSY_METHODS,
    mark_lossy,
    mark_lossy_source,
)
from workers.transforms.transcode_error import TranscodeError as TranscodeError

NATIVE_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
     DeflatedExplicitVRLittleEndian}
)
# Syntaxes that cannot lose information. Anything else (including syntaxes this module does
# not know) counts as lossy: JPEG 2000 (.91) and HTJ2K (.203) allow lossy coding.
LOSSLESS_SYNTAXES = NATIVE_SYNTAXES | frozenset(
    {JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, JPEG2000MCLossless,
     HTJ2KLossless, HTJ2KLosslessRPCL, RLELossless}
)

# What an operator can install to gain a codec, named in TranscodeError messages.
_JPEG_DECODERS = "python-gdcm or pylibjpeg-libjpeg"
_DECODER_PACKAGES: dict[str, str] = {
    JPEGBaseline8Bit: _JPEG_DECODERS,
    JPEGExtended12Bit: "pylibjpeg-libjpeg (GDCM and Pillow decode 8-bit samples only)",
    JPEGLossless: _JPEG_DECODERS,
    JPEGLosslessSV1: _JPEG_DECODERS,
    JPEGLSLossless: "python-gdcm or pyjpegls",
    JPEGLSNearLossless: "python-gdcm or pyjpegls",
    JPEG2000Lossless: "python-gdcm or pylibjpeg-openjpeg",
    JPEG2000: "python-gdcm or pylibjpeg-openjpeg",
    HTJ2KLossless: "pylibjpeg-openjpeg",
    HTJ2KLosslessRPCL: "pylibjpeg-openjpeg",
    HTJ2K: "pylibjpeg-openjpeg",
    RLELossless: "numpy",
}
_ENCODER_PACKAGES: dict[str, str] = {
    RLELossless: "numpy",
    JPEGLSLossless: "pyjpegls",
    JPEGLSNearLossless: "pyjpegls",
    JPEG2000Lossless: "pylibjpeg-openjpeg",
    JPEG2000: "pylibjpeg-openjpeg",
}

# Encoder settings for lossy targets (used only with allow_lossy=True); the value of Lossy
# Image Compression Method (PS3.3 C.7.6.1.1.5.1) each one records: lossy_history.py.
_LOSSY_OPTIONS: dict[str, dict[str, Any]] = {
    JPEG2000: {"j2k_cr": [10.0]},  # 10:1
    JPEGLSNearLossless: {"jls_error": 2},  # as DCMTK's dcmcjpls +en
}
# GDCM's RLE encoder, pydicom's first, abort()s the whole process on an 8-bit image with an
# odd pixel count (101x99 RGB, 3x3 MONOCHROME2: gdcmRLECodec.cxx:531, "image_len %
# MaxNumSegments == 0"; measured: 16-bit or an even count encode). pydicom's own encoder
# never aborts but is about 20 times slower (0.13 s against 0.007 s for a 512x512 16-bit
# frame), so it goes first only for such images; an abort elsewhere is retried with it
# in a new process (codec_process.py).
def gdcm_rle_aborts(ds: Dataset) -> bool:
    pixels = int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0)
    return int(ds.get("BitsAllocated") or 0) == 8 and pixels > 1 and pixels % 2 == 1

_FLOAT_PIXEL_KEYWORDS = ("FloatPixelData", "DoubleFloatPixelData")
_EXTENDED_OFFSET_KEYWORDS = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")


def describe(ts: str) -> str:
    """'JPEG Baseline (Process 1) 1.2.840.10008.1.2.4.50', or 'transfer syntax <uid>'."""
    name = UID(ts).name
    return f"transfer syntax {ts}" if name == ts else f"{name} {ts}"


def is_lossless(ts: str) -> bool:
    return ts in LOSSLESS_SYNTAXES


def can_decode(ts: str) -> bool:
    """True if pixel data in syntax ``ts`` can be read with the installed plugins."""
    if ts in NATIVE_SYNTAXES:
        return True
    try:
        return get_decoder(ts).is_available
    except NotImplementedError:  # pydicom has no decoder for this syntax at all
        return False


def can_encode(ts: str) -> bool:
    """True if pixel data can be written in syntax ``ts`` with the installed plugins."""
    if ts in NATIVE_SYNTAXES:
        return True
    try:
        return get_encoder(ts).is_available
    except NotImplementedError:
        return False


def can_transcode(source_ts: str, target_ts: str) -> bool:
    """True if an instance in source_ts can be rewritten in target_ts (lossy or not)."""
    return source_ts == target_ts or (can_decode(source_ts) and can_encode(target_ts))


def encoder_plugins(ts: str, ds: Dataset | None = None) -> list[str]:
    """The installed encoder plugins for ``ts`` in the order to try them on ``ds``, one at a
    time; [""] for a native syntax, which has nothing to encode."""
    if ts in NATIVE_SYNTAXES:
        return [""]
    first = "pydicom" if ts == RLELossless and ds is not None and gdcm_rle_aborts(ds) else ""
    return sorted(get_encoder(ts).available_plugins, key=lambda plugin: plugin != first)


def target_candidates(source_ts: str, accepted: Sequence[str]) -> list[str]:
    """The syntaxes to try, in order, given a destination's syntaxes in order of preference.

    [source_ts] if accepted (nothing to do); otherwise every accepted lossless syntax we can
    produce from source_ts, in the destination's order: an encoder may still fail on one image
    (openjpeg on images under 32 pixels), and then the next one is tried. A lossy syntax is
    never a candidate unless it is source_ts, so the router never degrades an image on its
    own initiative.
    """
    if source_ts in accepted:
        return [source_ts]
    return [ts for ts in accepted if is_lossless(ts) and can_transcode(source_ts, ts)]


def choose_target(source_ts: str, accepted: Sequence[str]) -> str | None:
    """The first of ``target_candidates``: what is sent unless its encoder fails; or None."""
    candidates = target_candidates(source_ts, accepted)
    return candidates[0] if candidates else None


def transcode_file(
    source: Path, target: Path, target_ts: str, *, allow_lossy: bool = False
) -> None:
    """Write the instance in ``source`` to ``target`` in ``target_ts``; never touch source.

    Holds the whole instance, with its pixel data decoded, in memory (see the module
    docstring): call it only when a destination accepts none of the instance's syntaxes.
    Raises TranscodeError (unreadable instance, no codec, lossy target without allow_lossy, a
    codec that fails on this image); OSError for I/O failures. No partial target is left.
    """
    if target.resolve() == source.resolve():
        raise TranscodeError(f"refusing to transcode {source} onto itself")
    source_ts = _source_syntax(source)
    if source_ts == target_ts:
        shutil.copyfile(source, target)
        return
    _check_target(target_ts, allow_lossy)
    write_as(load_decoded(source, source_ts), target, target_ts)


def load_decoded(source: Path, source_ts: str) -> FileDataset:
    """The instance with its pixel data decoded (native, in the source's byte order): read
    once for every syntax tried (``write_as``). Raises TranscodeError."""
    ds = _read(source)
    if "PixelData" in ds and source_ts not in NATIVE_SYNTAXES:
        compressed_size = len(ds.PixelData)
        _decode(ds, source_ts)
        if not is_lossless(source_ts):  # the syntax was the only record of it, maybe
            mark_lossy_source(ds, len(ds.PixelData) / max(1, compressed_size),
                               SOURCE_LOSSY_METHODS.get(source_ts, ""))
    return ds


def write_as(ds: FileDataset, target: Path, target_ts: str, plugin: str = "") -> None:
    """Write ``ds`` (from ``load_decoded``) to ``target`` in ``target_ts``, a syntax already
    checked (``_check_target``, or one of ``target_candidates``), with encoder ``plugin``
    (one of ``encoder_plugins``; "": each in turn). Changes ``ds``: pass a copy to try
    another syntax or plugin after this one."""
    _check_float_pixels(ds, target_ts)
    set_byte_order(ds, little_endian=target_ts != ExplicitVRBigEndian)
    if "PixelData" in ds and target_ts not in NATIVE_SYNTAXES:
        _encode(ds, target_ts, plugin)
    ds.file_meta.TransferSyntaxUID = UID(target_ts)
    _write(ds, target)


_READ_ERRORS = (InvalidDicomError, EOFError, ValueError, KeyError)


def _source_syntax(source: Path) -> str:
    try:
        ts = read_file_meta_info(source).get("TransferSyntaxUID")
    except _READ_ERRORS as exc:
        raise TranscodeError(f"cannot read {source} as DICOM: {exc}") from exc
    if not ts:
        raise TranscodeError(f"{source} has no Transfer Syntax UID in its file meta")
    return str(ts)


def _read(source: Path) -> FileDataset:
    try:
        with readable():  # pydicom's failures on hostile input, nesting past 64 levels
            ds = dcmread(source)
            check_nesting(ds)  # before pydicom's recursive writer meets it
            return ds
    except (*_READ_ERRORS, UnfitDataset) as exc:
        raise TranscodeError(f"cannot read {source} as DICOM: {exc}") from exc


def _check_float_pixels(ds: Dataset, target_ts: str) -> None:
    """Only Pixel Data is ever encapsulated (PS3.5 A.4); float pixel data stays native."""
    if target_ts not in NATIVE_SYNTAXES and any(k in ds for k in _FLOAT_PIXEL_KEYWORDS):
        raise TranscodeError(f"cannot encode {describe(target_ts)}: float pixel data is "
                             "carried by native syntaxes only")


def _check_target(target_ts: str, allow_lossy: bool) -> None:
    if not can_encode(target_ts):
        raise TranscodeError(f"cannot encode {describe(target_ts)}: "
                             f"{_remedy(target_ts, _ENCODER_PACKAGES, 'encoder')}")
    if not is_lossless(target_ts) and not allow_lossy:
        raise TranscodeError(f"{describe(target_ts)} is lossy: the router produces it only "
                             "when lossy transcoding is explicitly allowed")


def _remedy(ts: str, packages: dict[str, str], kind: str) -> str:
    if ts in packages:
        return f"install {packages[ts]}"
    return (f"pydicom has no {kind} for it; configure the destination to accept another "
            "syntax, or route these instances elsewhere")


def _decode(ds: Dataset, source_ts: str) -> None:
    """Decompress in place to Explicit VR Little Endian, keeping the SOP Instance UID.

    Plugins are tried one at a time rather than by pydicom's own fallback, which gives up
    when a plugin decodes but pydicom's post-processing of its output fails (pydicom 3.0.2
    with GDCM on signed JPEG-LS: "output array is read-only").
    """
    if not can_decode(source_ts):
        raise TranscodeError(f"cannot decode {describe(source_ts)}: "
                             f"{_remedy(source_ts, _DECODER_PACKAGES, 'decoder')}")
    failures = []
    for plugin in get_decoder(source_ts).available_plugins:
        try:
            ds.decompress(decoding_plugin=plugin, generate_instance_uid=False)
            break
        except Exception as exc:  # plugins raise anything from ValueError to RuntimeError
            failures.append(_last_line(plugin, exc))
    else:
        hint = _DECODER_PACKAGES.get(source_ts)
        tail = f"; {hint} may decode it" if hint else ""
        raise TranscodeError(f"cannot decode {describe(source_ts)}: every installed decoder "
                             f"failed ({'; '.join(failures)}){tail}")
    # Native pixel data has no extended offset table (PS3.3 C.7.6.3.1.8).
    for keyword in _EXTENDED_OFFSET_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)


def _last_line(plugin: str, exc: Exception) -> str:
    """pydicom wraps a plugin's error in a multi-line summary; its last line is the cause."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = lines[-1] if lines else type(exc).__name__
    return cause if cause.startswith(f"{plugin}:") else f"{plugin}: {cause}"


def _encode(ds: Dataset, target_ts: str, plugin: str) -> None:
    """Compress native little endian pixel data in place, keeping the SOP Instance UID.

    Plugins are tried one at a time (``encoder_plugins``), not by pydicom's own fallback,
    which tries GDCM first for RLE: a plugin that aborts the process is never followed by
    the next one. The codec process names one plugin per attempt, so that one that crashed
    it can be skipped in the next process.
    """
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        _expand_subsampled(ds)
    native_size = len(ds.PixelData)
    options = _LOSSY_OPTIONS.get(target_ts, {})
    failures = []
    for name in [plugin] if plugin else encoder_plugins(target_ts, ds):
        try:
            ds.compress(target_ts, encoding_plugin=name, generate_instance_uid=False,
                        **options)
            break
        except Exception as exc:  # e.g. a bit depth or colour space it cannot represent
            failures.append(_last_line(name, exc))
    else:
        raise TranscodeError(f"cannot encode this image as {describe(target_ts)}: "
                             f"{'; '.join(failures)}; configure the destination to accept "
                             "another syntax")
    if target_ts in LOSSY_METHODS:
        mark_lossy(ds, native_size / max(1, len(ds.PixelData)), LOSSY_METHODS[target_ts])


def _expand_subsampled(ds: Dataset) -> None:
    """Native YBR_FULL_422 (an ultrasound cine: Y1 Y2 Cb Cr for each pair of pixels) as
    YBR_FULL, three samples a pixel: no encoder takes the subsampled bytes ("the length of
    the uncompressed pixel data doesn't match"), and the frame-by-frame path writes it so."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        arr, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, raw=True)
    except Exception as exc:  # a length or size the header does not describe
        raise TranscodeError(f"cannot read its YBR_FULL_422 pixel data: "
                             f"{_last_line('pydicom', exc)}") from exc
    ds.PixelData = arr.tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.PlanarConfiguration = 0


def _write(ds: FileDataset, target: Path) -> None:
    try:
        # dcmwrite, not save_as: save_as refuses a byte-order change, done by set_byte_order.
        dcmwrite(target, ds, enforce_file_format=True)
    except (ValueError, OverflowError, *UNREADABLE) as exc:  # TypeError, struct.error too
        target.unlink(missing_ok=True)
        raise TranscodeError(f"cannot write the instance in "
                             f"{describe(ds.file_meta.TransferSyntaxUID)}: {exc}") from exc
    except BaseException:
        target.unlink(missing_ok=True)
        raise
