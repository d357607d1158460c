"""Transcoding one frame at a time (workers/transforms/frame_transcode.py): what it writes
is what the whole-instance path writes, and its memory is about one frame, not the image."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from tests.compressed_samples import native_dataset, write_compressed, write_native
from workers.transforms.frame_transcode import by_frame_supported, write_by_frame
from workers.transforms.transcode import TranscodeError, transcode_file


@pytest.mark.parametrize(("source_ts", "target_ts", "colour"), [
    (JPEGBaseline8Bit, ExplicitVRLittleEndian, True),  # YBR JPEG -> RGB, lossy history
    (RLELossless, ImplicitVRLittleEndian, False),
    (ExplicitVRLittleEndian, RLELossless, False),
    (ExplicitVRLittleEndian, JPEG2000Lossless, True),
    (JPEG2000Lossless, JPEGLSLossless, False),
])
def test_frame_by_frame_writes_what_the_whole_instance_path_writes(
        tmp_path: Path, source_ts: str, target_ts: str, colour: bool) -> None:
    bits = 8 if colour else None
    source = write_native(tmp_path, "in.dcm", frames=3, colour=colour, bits=bits or 12) \
        if source_ts == ExplicitVRLittleEndian else \
        write_compressed(tmp_path, source_ts, frames=3, colour=colour, bits=bits, name="in.dcm")
    transcode_file(source, tmp_path / "whole.dcm", target_ts)
    write_by_frame(source, tmp_path / "frames.dcm", target_ts)

    whole, frames = dcmread(tmp_path / "whole.dcm"), dcmread(tmp_path / "frames.dcm")
    assert frames.file_meta.TransferSyntaxUID == target_ts
    assert [e for e in frames if e.keyword != "PixelData"] == \
        [e for e in whole if e.keyword != "PixelData"]
    assert np.array_equal(frames.pixel_array, whole.pixel_array)
    if source_ts == JPEGBaseline8Bit:
        assert frames.PhotometricInterpretation == "RGB"
        assert frames.LossyImageCompression == "01"


def test_a_pair_it_cannot_write_is_refused_by_name(tmp_path: Path) -> None:
    source = write_native(tmp_path, "in.dcm", frames=2)
    assert not by_frame_supported(ExplicitVRLittleEndian, "1.2.840.10008.1.2.2")
    with pytest.raises(TranscodeError, match="frame-by-frame transcoding cannot write"):
        write_by_frame(source, tmp_path / "out.dcm", "1.2.840.10008.1.2.2")
    assert not (tmp_path / "out.dcm").exists()


def _peak(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _peaks(folder: Path, frames: int) -> tuple[int, int, int]:
    """Peak traced memory encoding native frames of 128x128 16-bit as RLE with pydicom's own
    encoder, decoding them back, and decoding them with the whole-instance path."""
    folder.mkdir()
    source = write_native(folder, "native.dcm", rows=128, columns=128, frames=frames)
    rle, back = folder / "rle.dcm", folder / "back.dcm"
    encoding = _peak(lambda: write_by_frame(source, rle, RLELossless, "pydicom"))
    decoding = _peak(lambda: write_by_frame(rle, back, ExplicitVRLittleEndian))
    whole = _peak(lambda: transcode_file(rle, folder / "whole.dcm", ExplicitVRLittleEndian))
    assert np.array_equal(dcmread(back).pixel_array, dcmread(source).pixel_array)
    return encoding, decoding, whole


def test_its_peak_memory_does_not_grow_with_the_number_of_frames(tmp_path: Path) -> None:
    """Python and numpy allocations, which tracemalloc sees (pydicom's RLE codecs): three
    times the frames, the same peak, a few frames' worth (the codec's own copies of one
    frame); the whole-instance path's grows with the image."""
    frame = 128 * 128 * 2
    few, many = _peaks(tmp_path / "few", 16), _peaks(tmp_path / "many", 48)
    for way in (0, 1):  # encoding, decoding
        assert many[way] < few[way] + frame, (few, many)
        assert many[way] < 12 * frame, (few, many)
    assert many[2] > 48 * frame > few[2]


@pytest.mark.parametrize("write", [write_by_frame, transcode_file])
def test_a_native_ybr_full_422_multiframe_is_written_expanded(
        tmp_path: Path, write: Callable[[Path, Path, str], None]) -> None:
    """Regression: native YBR_FULL_422 (an ultrasound cine, two bytes a pixel) was read past
    its first frame at the offsets of expanded frames (three bytes a pixel), the wrong
    pixels and then none: a dead letter 'ValueError: cannot reshape array of size 8192'.
    Each frame is now read at its own offset: the frames arrive expanded, as YBR_FULL. The
    whole-instance path (within the budget) was a dead letter too, "the length of the
    uncompressed pixel data doesn't match": it expands it alike."""
    ds = native_dataset(bits=8, colour=True, frames=4)
    ybr = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL").reshape(4, -1, 2, 3)
    pairs = (ybr[..., 0, 0:1], ybr[..., 1, 0:1], ybr[..., 0, 1:2], ybr[..., 0, 2:3])
    ds.PixelData = np.concatenate(pairs, axis=-1).astype("u1").tobytes()  # Y1 Y2 Cb Cr
    ds.PhotometricInterpretation = "YBR_FULL_422"
    source = tmp_path / "us.dcm"
    ds.save_as(source, enforce_file_format=True)

    write(source, tmp_path / "rle.dcm", RLELossless)

    got, sent = dcmread(tmp_path / "rle.dcm"), dcmread(source)
    assert got.PhotometricInterpretation == "YBR_FULL"
    assert np.array_equal(got.pixel_array, sent.pixel_array)


def test_a_frame_that_does_not_decode_is_named_in_the_error(tmp_path: Path) -> None:
    """Regression: a damaged frame in the middle (frame 4 of 6) was a dead letter saying
    'RuntimeError: Unable to decode as exceptions were raised by all available plugins:
    gdcm: ...', though only the decoder of the first frame had been tried, and no frame
    was named. It now says which frame, and with which decoder."""
    ds = native_dataset(bits=16, frames=6)
    ds.compress(JPEGLSLossless, generate_instance_uid=False)
    frames = list(generate_frames(ds.PixelData, number_of_frames=6))
    frames[3] = frames[3][:40] + b"\0" * (len(frames[3]) - 40)
    ds.PixelData = encapsulate(frames)
    source = tmp_path / "damaged.dcm"
    ds.save_as(source, enforce_file_format=True)
    first = dcmread(source)
    first.pixel_array_options(index=0)
    first.pixel_array  # noqa: B018 (the first frame decodes)

    with pytest.raises(TranscodeError) as caught:
        write_by_frame(source, tmp_path / "out.dcm", ExplicitVRLittleEndian)
    assert str(caught.value).startswith(
        "cannot decode frame 4 of 6 of its JPEG-LS Lossless Image Compression "
        "1.2.840.10008.1.2.4.80 pixel data with ")
    assert "all available plugins" not in str(caught.value)
    assert "the decoder of its first frame: " in str(caught.value)
    assert not (tmp_path / "out.dcm").exists()


def test_a_frame_of_another_size_than_the_header_says_is_refused_not_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native target's Pixel Data length is written from the header before the frames:
    a frame a decoder returned at another size (a stream whose components disagree with
    Samples per Pixel, should a decoder let one through) would have made a file whose length
    lies, delivered as Success. It is refused, and no partial file is left."""
    from workers.transforms import frame_transcode

    source = write_compressed(tmp_path, RLELossless, bits=16, frames=3)
    real = frame_transcode._decoded_frames

    def one_short(*args: object) -> object:
        frames, first = real(*args)  # type: ignore[arg-type]

        def later() -> object:
            for arr, properties in frames:
                yield arr[:-1], properties  # a row short
        return later(), first

    monkeypatch.setattr(frame_transcode, "_decoded_frames", one_short)
    with pytest.raises(TranscodeError, match=r"frame 2 decoded to \d+ bytes, not the \d+"):
        write_by_frame(source, tmp_path / "out.dcm", ExplicitVRLittleEndian)
    assert not (tmp_path / "out.dcm").exists()
