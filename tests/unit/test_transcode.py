"""workers.transforms.transcode against real codecs: files compressed by DCMTK and by pydicom's
encoders, decoded with the installed plugins, and cross-checked with DCMTK's decoders."""

from __future__ import annotations

import importlib.util
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels.processing import apply_rescale
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    MPEG2MPML,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from tests.compressed_samples import (
    LOSSY_SAMPLE_SYNTAXES,
    RESCALE_INTERCEPT,
    default_bits,
    expected_pixels,
    native_dataset,
    write_compressed,
    write_native,
)
from workers.transforms.transcode import (
    TranscodeError,
    can_decode,
    can_encode,
    choose_target,
    target_candidates,
    transcode_file,
)

OVERLAY_DATA = 0x60003000
NATIVE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
          DeflatedExplicitVRLittleEndian)
# Elements decoding may legitimately change: a YBR JPEG comes out as RGB.
COLOUR_MODEL = frozenset({"PhotometricInterpretation", "PlanarConfiguration"})
LOSSY_HISTORY = frozenset({"LossyImageCompression", "LossyImageCompressionRatio",
                           "LossyImageCompressionMethod"})
DCMCONV_FLAGS: dict[str, str] = {ImplicitVRLittleEndian: "+ti", ExplicitVRLittleEndian: "+te",
                 ExplicitVRBigEndian: "+tb", DeflatedExplicitVRLittleEndian: "+td"}


@dataclass(frozen=True)
class Sample:
    ts: str
    encoder: Literal["pydicom", "dcmtk"] = "pydicom"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        return write_compressed(folder, self.ts, encoder=self.encoder, **self.kwargs)

    def expected(self) -> np.ndarray:
        args = {"bits": default_bits(self.ts), **self.kwargs}
        return expected_pixels(**args)


SAMPLES = [
    pytest.param(Sample(JPEGBaseline8Bit, "dcmtk"), id="jpeg-baseline"),
    pytest.param(Sample(JPEGBaseline8Bit, "dcmtk", {"colour": True}), id="jpeg-baseline-rgb"),
    pytest.param(Sample(JPEGExtended12Bit, "dcmtk", {"bits": 8}), id="jpeg-extended-8bit"),
    pytest.param(Sample(JPEGLossless, "dcmtk", {"bits": 16}), id="jpeg-lossless-16bit"),
    pytest.param(Sample(JPEGLossless, "dcmtk", {"signed": True}), id="jpeg-lossless-signed"),
    pytest.param(Sample(JPEGLosslessSV1, "dcmtk", {"frames": 3}), id="jpeg-sv1-multiframe"),
    pytest.param(Sample(JPEGLosslessSV1, "dcmtk", {"bits": 8, "colour": True}),
                 id="jpeg-sv1-rgb"),
    pytest.param(Sample(JPEGLSLossless, kwargs={"signed": True}), id="jpeg-ls-signed"),
    pytest.param(Sample(JPEGLSLossless, kwargs={"bits": 8, "colour": True}), id="jpeg-ls-rgb"),
    pytest.param(Sample(JPEGLSLossless, "dcmtk", {"frames": 2}), id="jpeg-ls-dcmtk"),
    pytest.param(Sample(JPEGLSNearLossless, "dcmtk"), id="jpeg-ls-near-dcmtk"),
    pytest.param(Sample(JPEG2000Lossless), id="j2k-lossless"),
    pytest.param(Sample(JPEG2000Lossless, kwargs={"bits": 8, "colour": True}), id="j2k-rgb"),
    pytest.param(Sample(JPEG2000Lossless, kwargs={"signed": True, "frames": 3}),
                 id="j2k-signed-multiframe"),
    pytest.param(Sample(JPEG2000), id="j2k-lossy"),
    pytest.param(Sample(RLELossless, kwargs={"frames": 3}), id="rle-multiframe"),
    pytest.param(Sample(RLELossless, kwargs={"signed": True}), id="rle-signed"),
    pytest.param(Sample(RLELossless, "dcmtk", {"bits": 8, "colour": True}), id="rle-dcmtk-rgb"),
]


def values(ds: Dataset, skip: frozenset[str] = frozenset()) -> dict[int, Any]:
    """Every element's value by tag (sequences as lists of such dicts), PixelData excluded.

    Private values are compared as bytes: an implicit VR hop turns a private element whose
    VR no dictionary knows into UN, with the same bytes.
    """
    out: dict[int, Any] = {}
    for elem in ds:
        if elem.keyword in skip or elem.keyword == "PixelData":
            continue
        if elem.VR == "SQ":
            out[int(elem.tag)] = [values(item) for item in elem.value]
        elif elem.tag.is_private and isinstance(elem.value, str):
            out[int(elem.tag)] = elem.value.encode()
        else:
            out[int(elem.tag)] = elem.value
    return out


def assert_same_instance(source: FileDataset, out: FileDataset, target_ts: str,
                         skip: frozenset[str] = frozenset()) -> None:
    assert out.file_meta.TransferSyntaxUID == target_ts
    assert out.SOPInstanceUID == source.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == source.SOPClassUID
    assert values(out, skip) == values(source, skip)


def modality_values(ds: FileDataset) -> np.ndarray:
    """Pixels in modality units (HU for the CT samples), as float."""
    arr = ds.pixel_array.reshape(-1).astype(np.float64)
    return apply_rescale(arr, ds) if "RescaleIntercept" in ds else arr


def expected_modality_values(sample: Sample) -> np.ndarray:
    arr = sample.expected().reshape(-1).astype(np.float64)
    return arr if sample.kwargs.get("colour") else arr + RESCALE_INTERCEPT


def dcmtk(*command: str | Path) -> None:
    subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=60)


# Decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES)
def test_compressed_sources_decode_to_explicit_little_endian(
    tmp_path: Path, sample: Sample
) -> None:
    source = sample.write(tmp_path / "in")
    before = source.read_bytes()
    target = tmp_path / "out.dcm"

    transcode_file(source, target, ExplicitVRLittleEndian)

    assert source.read_bytes() == before
    src, out = dcmread(source), dcmread(target)
    lossy = sample.ts in LOSSY_SAMPLE_SYNTAXES
    assert_same_instance(src, out, ExplicitVRLittleEndian,
                         COLOUR_MODEL | LOSSY_HISTORY if lossy else COLOUR_MODEL)
    if lossy:  # pydicom's JPEG 2000 encoder does not record it: decoding it does
        assert out.LossyImageCompression == "01"
        error = np.abs(modality_values(out) - expected_modality_values(sample))
        assert error.mean() < 3
        if sample.ts == JPEGLSNearLossless:
            assert error.max() <= 2  # NEAR = 2 bounds every pixel
    else:
        assert np.array_equal(out.pixel_array, sample.expected())
        assert out.PhotometricInterpretation == src.PhotometricInterpretation


def test_ybr_jpeg_comes_out_rgb(tmp_path: Path) -> None:
    source = write_compressed(tmp_path, JPEGBaseline8Bit, colour=True)
    transcode_file(source, tmp_path / "out.dcm", ExplicitVRLittleEndian)
    assert dcmread(source).PhotometricInterpretation == "YBR_FULL_422"
    out = dcmread(tmp_path / "out.dcm")
    assert (out.PhotometricInterpretation, out.PlanarConfiguration) == ("RGB", 0)


@pytest.mark.parametrize("target_ts", [ExplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("source_ts", [ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                       DeflatedExplicitVRLittleEndian])
def test_native_sources_written_by_dcmtk(tmp_path: Path, source_ts: str, target_ts: str) -> None:
    original = write_native(tmp_path, "original.dcm", bits=16)
    source = tmp_path / "source.dcm"
    dcmtk("dcmconv", DCMCONV_FLAGS[source_ts], original, source)

    transcode_file(source, tmp_path / "out.dcm", target_ts)

    out, orig = dcmread(tmp_path / "out.dcm"), dcmread(original)
    assert np.array_equal(out.pixel_array, orig.pixel_array)
    assert out[OVERLAY_DATA].value == orig[OVERLAY_DATA].value  # swapped back from BE
    assert_same_instance(orig, out, target_ts)


# Encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("target_ts", [ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                       DeflatedExplicitVRLittleEndian])
def test_native_targets_read_back_by_dcmtk(tmp_path: Path, target_ts: str) -> None:
    """DCMTK, not pydicom, reads our output: a byte-order slip in pixels or overlay shows."""
    original = write_native(tmp_path, "original.dcm", bits=16)
    out = tmp_path / "out.dcm"

    transcode_file(original, out, target_ts)

    assert dcmread(out).file_meta.TransferSyntaxUID == target_ts
    dcmtk("dcmconv", "+te", out, tmp_path / "back.dcm")
    back, orig = dcmread(tmp_path / "back.dcm"), dcmread(original)
    assert back.PixelData == orig.PixelData
    assert_same_instance(orig, back, ExplicitVRLittleEndian)


def test_compressed_source_to_big_endian(tmp_path: Path) -> None:
    source = write_compressed(tmp_path / "in", JPEG2000Lossless, bits=16, frames=2)
    transcode_file(source, tmp_path / "out.dcm", ExplicitVRBigEndian)
    dcmtk("dcmconv", "+te", tmp_path / "out.dcm", tmp_path / "back.dcm")
    back = dcmread(tmp_path / "back.dcm")
    assert np.array_equal(back.pixel_array, expected_pixels(bits=16, frames=2))
    assert_same_instance(dcmread(source), back, ExplicitVRLittleEndian)


LOSSLESS_TARGETS = [
    pytest.param(RLELossless, ("dcmdrle",), id="rle"),
    pytest.param(JPEGLSLossless, ("dcmdjpls",), id="jpeg-ls"),
    pytest.param(JPEG2000Lossless, (), id="j2k"),  # DCMTK has no JPEG 2000 decoder
]
PIXEL_KINDS = [
    pytest.param({"bits": 12}, id="ct12"),
    pytest.param({"bits": 16, "frames": 3}, id="mono16-multiframe"),
    pytest.param({"bits": 12, "signed": True}, id="signed"),
    pytest.param({"bits": 8, "colour": True}, id="rgb"),
]


def write_big_endian_ob(path: Path) -> Path:
    """16-bit pixels in Explicit VR Big Endian labelled OB (PS3.5 A.3 wants OW), as some
    senders write them: big endian words, as pydicom reads them."""
    ds = native_dataset(bits=16, rows=16, columns=16)
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 1792).astype(">u2").tobytes()
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.mark.parametrize("target_ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                       RLELossless])
def test_big_endian_16_bit_pixels_labelled_ob_are_swapped(tmp_path: Path,
                                                          target_ts: str) -> None:
    source = write_big_endian_ob(tmp_path / "be-ob.dcm")
    before = dcmread(source).pixel_array
    assert list(before.ravel()[:3]) == [0, 1792, 3584]
    transcode_file(source, tmp_path / "out.dcm", target_ts)
    out = dcmread(tmp_path / "out.dcm")
    assert np.array_equal(out.pixel_array, before)
    if target_ts == ExplicitVRLittleEndian:  # and said so, for readers that trust the VR
        assert out["PixelData"].VR == "OW"


def test_little_endian_16_bit_pixels_labelled_ob_to_big_endian(tmp_path: Path) -> None:
    ds = native_dataset(bits=16)
    ds["PixelData"].VR = "OB"
    source = tmp_path / "le-ob.dcm"
    ds.save_as(source, enforce_file_format=True)
    transcode_file(source, tmp_path / "out.dcm", ExplicitVRBigEndian)
    out = dcmread(tmp_path / "out.dcm")
    assert out["PixelData"].VR == "OW"
    assert np.array_equal(out.pixel_array, dcmread(source).pixel_array)


@pytest.mark.parametrize("kind", PIXEL_KINDS)
@pytest.mark.parametrize(("target_ts", "decoder"), LOSSLESS_TARGETS)
def test_lossless_targets_round_trip(
    tmp_path: Path, target_ts: str, decoder: tuple[str, ...], kind: dict[str, Any]
) -> None:
    original = write_native(tmp_path, "original.dcm", **kind)
    before = original.read_bytes()
    compressed, back = tmp_path / "compressed.dcm", tmp_path / "back.dcm"

    transcode_file(original, compressed, target_ts)
    transcode_file(compressed, back, ExplicitVRLittleEndian)

    assert original.read_bytes() == before
    orig = dcmread(original)
    assert_same_instance(orig, dcmread(compressed), target_ts)
    assert np.array_equal(dcmread(compressed).pixel_array, expected_pixels(**kind))
    assert_same_instance(orig, dcmread(back), ExplicitVRLittleEndian)
    assert dcmread(back).PixelData == orig.PixelData
    if decoder:  # an independent decoder agrees (on the pixel values: DCMTK may leave the
        # bits above High Bit of signed pixels clear where pydicom's encoder had them set)
        dcmtk(*decoder, compressed, tmp_path / "dcmtk.dcm")
        assert np.array_equal(dcmread(tmp_path / "dcmtk.dcm").pixel_array, orig.pixel_array)


@pytest.mark.parametrize(("source_ts", "target_ts"), [
    (JPEGLosslessSV1, JPEG2000Lossless),
    (RLELossless, JPEGLSLossless),
    (JPEG2000Lossless, RLELossless),
])
def test_compressed_to_other_compressed(tmp_path: Path, source_ts: str, target_ts: str) -> None:
    # dcmcjpeg makes the JPEG file whatever the encoder argument says
    source = write_compressed(tmp_path / "in", source_ts, frames=2)
    transcode_file(source, tmp_path / "out.dcm", target_ts)
    out = dcmread(tmp_path / "out.dcm")
    assert_same_instance(dcmread(source), out, target_ts)
    assert np.array_equal(out.pixel_array, expected_pixels(frames=2))


def test_lossy_source_keeps_its_lossy_history(tmp_path: Path) -> None:
    source = write_compressed(tmp_path / "in", JPEGBaseline8Bit, encoder="dcmtk")
    transcode_file(source, tmp_path / "out.dcm", JPEG2000Lossless)
    out = dcmread(tmp_path / "out.dcm")
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_10918_1"


@pytest.mark.parametrize(("name", "strip", "method"), [
    ("SC_rgb_jpeg_dcmtk.dcm", True, "ISO_10918_1"),  # JPEG Baseline, its record removed
    ("JPEGLSNearLossless_08.dcm", False, "ISO_14495_1"),  # never had one
])
def test_decoding_a_lossy_syntax_records_the_lossy_step(
        tmp_path: Path, name: str, strip: bool, method: str) -> None:
    """The syntax was the only record that the pixels went through lossy compression: they
    came out native with no Lossy Image Compression (PS3.3 C.7.6.1.1.5 wants "01"; DCMTK's
    dcmdjpeg and dcmdjpls write it)."""
    source = tmp_path / name
    ds = dcmread(get_testdata_file(name))
    for keyword in LOSSY_HISTORY if strip else ():
        delattr(ds, keyword)
    assert not LOSSY_HISTORY & set(ds.dir())
    ds.save_as(source)
    transcode_file(source, tmp_path / "out.dcm", ExplicitVRLittleEndian)
    out = dcmread(tmp_path / "out.dcm")
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == method
    assert float(out.LossyImageCompressionRatio) > 1  # decoded size to compressed size


def test_decoding_a_recorded_lossy_step_does_not_record_it_twice(tmp_path: Path) -> None:
    source = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    transcode_file(source, tmp_path / "out.dcm", ExplicitVRLittleEndian)
    out, src = dcmread(tmp_path / "out.dcm"), dcmread(source)
    for keyword in LOSSY_HISTORY:
        assert out[keyword].value == src[keyword].value


@pytest.mark.parametrize(("target_ts", "method", "max_error"), [
    (JPEG2000, "ISO_15444_1", None),
    (JPEGLSNearLossless, "ISO_14495_1", 2),
])
def test_lossy_target_only_when_allowed(
    tmp_path: Path, target_ts: str, method: str, max_error: int | None
) -> None:
    original = write_native(tmp_path, "original.dcm")
    target = tmp_path / "out.dcm"
    with pytest.raises(TranscodeError, match="lossy"):
        transcode_file(original, target, target_ts)
    assert not target.exists()

    transcode_file(original, target, target_ts, allow_lossy=True)

    out, orig = dcmread(target), dcmread(original)
    lossy = frozenset({"LossyImageCompression", "LossyImageCompressionRatio",
                       "LossyImageCompressionMethod"})
    assert_same_instance(orig, out, target_ts, lossy)
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == method
    assert float(out.LossyImageCompressionRatio) > 1
    error = np.abs(out.pixel_array.astype(int) - orig.pixel_array.astype(int))
    assert error.mean() < 3
    if max_error is not None:
        assert error.max() <= max_error


def test_instance_without_pixels_is_relabelled(tmp_path: Path) -> None:
    ds = native_dataset()
    del ds.PixelData
    source = tmp_path / "no-pixels.dcm"
    ds.save_as(source, enforce_file_format=True)
    transcode_file(source, tmp_path / "out.dcm", JPEG2000Lossless)
    assert_same_instance(dcmread(source), dcmread(tmp_path / "out.dcm"), JPEG2000Lossless)


def test_group_lengths_are_dropped(tmp_path: Path) -> None:
    """Their values would be stale in the new encoding (and they are retired anyway)."""
    original = write_native(tmp_path, "original.dcm")
    source = tmp_path / "source.dcm"
    dcmtk("dcmconv", "+g", original, source)  # DCMTK writes (gggg,0000) for every group
    assert 0x00080000 in dcmread(source)

    transcode_file(source, tmp_path / "out.dcm", ImplicitVRLittleEndian)

    out = dcmread(tmp_path / "out.dcm")
    assert not [elem.tag for elem in out if elem.tag.element == 0]
    assert_same_instance(dcmread(original), out, ImplicitVRLittleEndian)


def test_same_syntax_is_a_byte_copy(tmp_path: Path) -> None:
    source = write_compressed(tmp_path / "in", RLELossless)
    transcode_file(source, tmp_path / "out.dcm", RLELossless)
    assert (tmp_path / "out.dcm").read_bytes() == source.read_bytes()


# Choosing a target ----------------------------------------------------------------------


@pytest.mark.parametrize(("source_ts", "accepted", "chosen"), [
    pytest.param(JPEG2000Lossless, [RLELossless, JPEG2000Lossless], JPEG2000Lossless,
                 id="source-accepted-means-no-transcoding"),
    pytest.param(JPEG2000Lossless, [JPEGBaseline8Bit, JPEG2000, ExplicitVRLittleEndian],
                 ExplicitVRLittleEndian, id="lossy-skipped"),
    pytest.param(ExplicitVRLittleEndian, [JPEG2000, JPEGLSNearLossless, RLELossless],
                 RLELossless, id="lossy-skipped-even-when-encodable"),
    pytest.param(JPEGBaseline8Bit, [JPEGBaseline8Bit, ExplicitVRLittleEndian],
                 JPEGBaseline8Bit, id="same-lossy-syntax"),
    pytest.param(JPEGBaseline8Bit, [JPEG2000, ImplicitVRLittleEndian],
                 ImplicitVRLittleEndian, id="lossy-source-other-lossy-skipped"),
    pytest.param(ExplicitVRLittleEndian, [JPEGLossless, "1.2.3.4.5", JPEGLSLossless],
                 JPEGLSLossless, id="no-encoder-or-unknown-skipped"),
    pytest.param(ImplicitVRLittleEndian, [ExplicitVRBigEndian, ExplicitVRLittleEndian],
                 ExplicitVRBigEndian, id="destination-order-wins"),
    pytest.param(ExplicitVRLittleEndian, [JPEGBaseline8Bit, JPEG2000], None,
                 id="only-lossy-offered"),
    pytest.param(MPEG2MPML, [ExplicitVRLittleEndian], None, id="no-decoder"),
    pytest.param("1.2.3.4.5", [ExplicitVRLittleEndian], None, id="unknown-source"),
    pytest.param(RLELossless, [], None, id="nothing-offered"),
])
def test_choose_target(source_ts: str, accepted: list[str], chosen: str | None) -> None:
    assert choose_target(source_ts, accepted) == chosen


def test_candidates_are_every_producible_lossless_syntax_in_the_destinations_order() -> None:
    """What the codec process tries, one after the other, until an encoder succeeds."""
    accepted = [JPEG2000Lossless, JPEG2000, "1.2.3.4.5", RLELossless, ExplicitVRLittleEndian]
    assert target_candidates(ImplicitVRLittleEndian, accepted) == [
        JPEG2000Lossless, RLELossless, ExplicitVRLittleEndian]
    assert target_candidates(RLELossless, [*accepted, RLELossless]) == [RLELossless]
    assert target_candidates(MPEG2MPML, accepted) == []


# What the installed plugins can do (pyproject.toml's codec dependencies).
DECODABLE = [*NATIVE, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
             JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, HTJ2KLossless,
             HTJ2K, RLELossless]
ENCODABLE = [*NATIVE, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
             RLELossless]


@pytest.mark.parametrize("ts", DECODABLE)
def test_can_decode(ts: str) -> None:
    assert can_decode(ts)


@pytest.mark.parametrize("ts", ENCODABLE)
def test_can_encode(ts: str) -> None:
    assert can_encode(ts)


@pytest.mark.parametrize("ts", [JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
                                JPEGLosslessSV1, HTJ2KLossless, MPEG2MPML, "1.2.3.4.5"])
def test_cannot_encode(ts: str) -> None:
    assert not can_encode(ts)


@pytest.mark.parametrize("ts", [MPEG2MPML, "1.2.3.4.5"])
def test_cannot_decode(ts: str) -> None:
    assert not can_decode(ts)


# Errors ---------------------------------------------------------------------------------


def write_encapsulated(path: Path, ts: str) -> Path:
    """An instance whose file meta claims ts, with one opaque fragment of pixel data."""
    ds = native_dataset(bits=8)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(ts)
    dcmwrite(path, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("ts", "message"), [
    (MPEG2MPML, r"cannot decode MPEG2 Main Profile / Main Level 1\.2\.840\.10008\.1\.2\.4\.100:"
                r" pydicom has no decoder for it; configure the destination"),
    ("1.2.3.4.5", r"cannot decode transfer syntax 1\.2\.3\.4\.5: pydicom has no decoder"),
])
def test_undecodable_source(tmp_path: Path, ts: str, message: str) -> None:
    source = write_encapsulated(tmp_path / "source.dcm", ts)
    before = source.read_bytes()
    target = tmp_path / "out.dcm"
    with pytest.raises(TranscodeError, match=message):
        transcode_file(source, target, ExplicitVRLittleEndian)
    assert source.read_bytes() == before
    assert not target.exists()


def test_twelve_bit_jpeg_extended(tmp_path: Path) -> None:
    """GDCM decodes 8-bit JPEG Extended only; 12-bit needs pylibjpeg-libjpeg (GPLv3, not a
    dependency). Without it the operator is told what to install."""
    source = write_compressed(tmp_path / "in", JPEGExtended12Bit, bits=12)
    target = tmp_path / "out.dcm"
    if importlib.util.find_spec("libjpeg") is not None:
        transcode_file(source, target, ExplicitVRLittleEndian)
        return
    with pytest.raises(TranscodeError, match=r"cannot decode JPEG Extended \(Process 2 and 4\)"
                       r" 1\.2\.840\.10008\.1\.2\.4\.51: every installed decoder failed "
                       r"\(gdcm: GDCM does not support .*12-bit.*\); pylibjpeg-libjpeg"):
        transcode_file(source, target, ExplicitVRLittleEndian)
    assert not target.exists()


@pytest.mark.parametrize(("target_ts", "message"), [
    ("1.2.3.4.5", r"cannot encode transfer syntax 1\.2\.3\.4\.5: pydicom has no encoder"),
    (JPEGBaseline8Bit, r"cannot encode JPEG Baseline \(Process 1\) 1\.2\.840\.10008\.1\.2\.4"
                       r"\.50: pydicom has no encoder"),
    (HTJ2K, r"cannot encode High-Throughput JPEG 2000 Image Compression 1\.2\.840\.10008"
            r"\.1\.2\.4\.203: pydicom has no encoder"),
])
def test_unencodable_target(tmp_path: Path, target_ts: str, message: str) -> None:
    original = write_native(tmp_path, "original.dcm", bits=8)
    target = tmp_path / "out.dcm"
    with pytest.raises(TranscodeError, match=message):
        transcode_file(original, target, target_ts, allow_lossy=True)
    assert not target.exists()


def test_encoder_that_cannot_represent_the_image(tmp_path: Path) -> None:
    """JPEG-LS carries at most 16 bits a sample: a 32-bit image is refused, not mangled."""
    ds = native_dataset(bits=16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = np.arange(64 * 64, dtype="<u4").tobytes()
    source = tmp_path / "source.dcm"
    ds.save_as(source, enforce_file_format=True)
    with pytest.raises(TranscodeError, match=r"cannot encode this image as JPEG-LS Lossless"):
        transcode_file(source, tmp_path / "out.dcm", JPEGLSLossless)
    assert not (tmp_path / "out.dcm").exists()


def test_float_pixel_data_stays_native(tmp_path: Path) -> None:
    ds = native_dataset()
    del ds.PixelData
    ds.FloatPixelData = np.zeros(64 * 64, dtype="<f4").tobytes()
    source = tmp_path / "float.dcm"
    ds.save_as(source, enforce_file_format=True)
    with pytest.raises(TranscodeError, match="float pixel data"):
        transcode_file(source, tmp_path / "out.dcm", RLELossless)
    transcode_file(source, tmp_path / "out.dcm", ImplicitVRLittleEndian)
    assert dcmread(tmp_path / "out.dcm").FloatPixelData == ds.FloatPixelData


def test_not_dicom(tmp_path: Path) -> None:
    source = tmp_path / "junk.dcm"
    source.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(TranscodeError, match="cannot read"):
        transcode_file(source, tmp_path / "out.dcm", ExplicitVRLittleEndian)


def test_refuses_to_write_over_the_source(tmp_path: Path) -> None:
    source = write_compressed(tmp_path, RLELossless)
    before = source.read_bytes()
    with pytest.raises(TranscodeError, match="onto itself"):
        transcode_file(source, source, ExplicitVRLittleEndian)
    assert source.read_bytes() == before


def test_transcode_error_is_a_value_error() -> None:
    assert issubclass(TranscodeError, ValueError)
