"""A transcode too large for its memory budget is refused from the header, before the codec
process decodes anything (workers/transforms/decoded_size.py), and the codec process offers
itself to the OOM killer first."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from prometheus_client import REGISTRY
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from router.core.config import parse_config
from router.core.errors import DeliveryError
from router.core.spool import Spool
from tests.compressed_samples import write_compressed, write_native
from workers.prepare import Preparer
from workers.transforms.codec_process import CodecProcess
from workers.transforms.decoded_size import decoded_bytes, estimate_decoded_bytes, over_budget

from .helpers import make_header


def test_the_decoded_size_is_rows_columns_samples_bytes_and_frames() -> None:
    assert decoded_bytes(512, 512, 1, 16, 1) == 512 * 512 * 2
    assert decoded_bytes(100, 200, 3, 8, 10) == 100 * 200 * 3 * 10
    assert decoded_bytes(3, 3, 1, 1, 1) == 2  # 9 packed bits take two bytes


def test_the_estimate_comes_from_the_header_of_a_compressed_multiframe(tmp_path: Path) -> None:
    path = write_compressed(tmp_path, RLELossless, rows=32, columns=48, frames=5)
    assert estimate_decoded_bytes(path) == 32 * 48 * 2 * 5  # 12 bits stored in 16
    colour = write_native(tmp_path, colour=True, bits=8, rows=20, columns=10)
    assert estimate_decoded_bytes(colour) == 20 * 10 * 3


def test_an_instance_its_header_cannot_size_is_left_to_the_codec_process(
        tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    assert estimate_decoded_bytes(junk) is None
    assert over_budget(None, 1, RLELossless) is None


def test_the_refusal_names_the_size_the_budget_and_what_to_do() -> None:
    assert over_budget(100, 100, RLELossless) is None
    message = over_budget(5 * 1024**3, 2 * 1024**3, RLELossless)
    assert message is not None
    assert "5.0 GiB" in message and "2.0 GiB" in message
    assert "transcode_max_decoded_bytes" in message
    assert f"RLE Lossless {RLELossless}" in message and "transfer_syntaxes" in message


class _NoCodecs(CodecProcess):
    """Fails the test if a transcode gets as far as the codec process."""

    def transcode(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise AssertionError("decoded anyway")


def _preparer(tmp_path: Path, budget: int, codecs: CodecProcess,
              syntaxes: tuple[str, ...] = (JPEG2000Lossless,)) -> Preparer:
    config = parse_config({
        "transcode_max_decoded_bytes": budget,
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": 104, "transfer_syntaxes": list(syntaxes)}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
    })
    return Preparer(config, Spool(tmp_path / "spool").create(), lambda: None, codecs)


def test_a_transcode_past_the_budget_is_a_dead_letter_before_any_decoding(
        tmp_path: Path) -> None:
    source = write_compressed(tmp_path / "in", RLELossless, rows=32, columns=32, frames=4)
    job = make_header(destinations=("pacs",), rules=("all",), transfer_syntax_uid=RLELossless)
    preparer = _preparer(tmp_path, 32 * 32 * 2 * 4 - 1, _NoCodecs())
    with pytest.raises(DeliveryError) as caught:
        preparer.prepare(job, "pacs", source)
    assert caught.value.reason == "transcode" and not caught.value.transient
    assert "8192 bytes" in str(caught.value) and "8191 bytes" in str(caught.value)
    # one of its 2048-byte frames is more than a quarter of the budget: not frame by frame
    assert "at most a quarter of the budget" in str(caught.value)
    assert not list(preparer.spool.relay.iterdir())  # no copy left behind


def test_a_single_frame_past_the_budget_is_refused_saying_it_has_one_frame(
        tmp_path: Path) -> None:
    source = write_compressed(tmp_path / "in", RLELossless, rows=32, columns=32)
    job = make_header(destinations=("pacs",), rules=("all",), transfer_syntax_uid=RLELossless)
    with pytest.raises(DeliveryError, match="several frames and it has one") as caught:
        _preparer(tmp_path, 1000, _NoCodecs()).prepare(job, "pacs", source)
    assert not caught.value.transient


@pytest.mark.parametrize(("source_ts", "target_ts"), [
    (RLELossless, ExplicitVRLittleEndian),
    (ExplicitVRLittleEndian, JPEGLSLossless),
])
def test_a_multiframe_past_the_budget_is_transcoded_one_frame_at_a_time(
        tmp_path: Path, source_ts: str, target_ts: str) -> None:
    """It was a `transcode` dead letter: one frame fits the budget many times over
    (workers/transforms/frame_transcode.py)."""
    folder = tmp_path / "in"
    folder.mkdir()
    source = write_native(folder, rows=32, columns=32, frames=20) \
        if source_ts == ExplicitVRLittleEndian else \
        write_compressed(folder, source_ts, rows=32, columns=32, frames=20)
    job = make_header(destinations=("pacs",), rules=("all",), transfer_syntax_uid=source_ts)
    codecs = CodecProcess()
    try:
        prepared = _preparer(tmp_path, 32 * 32 * 2 * 20 - 1, codecs,
                             (target_ts,)).prepare(job, "pacs", source)
    finally:
        codecs.close()
    assert prepared.job.transfer_syntax_uid == target_ts
    copy, original = pydicom.dcmread(prepared.path), pydicom.dcmread(source)
    assert copy.file_meta.TransferSyntaxUID == target_ts
    assert copy.SOPInstanceUID == original.SOPInstanceUID
    assert (copy.pixel_array == original.pixel_array).all()
    assert any("frame by frame" in str(change) for change in prepared.changes)
    prepared.cleanup()


def test_a_pair_frame_by_frame_cannot_write_is_a_dead_letter_saying_so(
        tmp_path: Path) -> None:
    source = write_compressed(tmp_path / "in", RLELossless, rows=32, columns=32, frames=20)
    job = make_header(destinations=("pacs",), rules=("all",), transfer_syntax_uid=RLELossless)
    codecs = CodecProcess()
    try:
        preparer = _preparer(tmp_path, 32 * 32 * 2 * 20 - 1, codecs, (ExplicitVRBigEndian,))
        with pytest.raises(DeliveryError) as caught:
            preparer.prepare(job, "pacs", source)
    finally:
        codecs.close()
    assert caught.value.reason == "transcode" and not caught.value.transient
    assert "transcode_max_decoded_bytes" in str(caught.value)
    assert "frame-by-frame transcoding cannot write RLE Lossless" in str(caught.value)
    assert "Big Endian" in str(caught.value)
    assert not list(preparer.spool.relay.iterdir())


def test_a_transcode_within_the_budget_is_done(tmp_path: Path) -> None:
    source = write_compressed(tmp_path / "in", RLELossless, rows=32, columns=32, frames=4)
    job = make_header(destinations=("pacs",), rules=("all",), transfer_syntax_uid=RLELossless)
    codecs = CodecProcess()
    try:
        prepared = _preparer(tmp_path, 32 * 32 * 2 * 4, codecs).prepare(job, "pacs", source)
    finally:
        codecs.close()
    assert prepared.job.transfer_syntax_uid == JPEG2000Lossless
    prepared.cleanup()


def test_the_codec_process_is_the_oom_killers_first_choice() -> None:
    codecs = CodecProcess()
    try:
        score = codecs.run(Path.read_text, Path("/proc/self/oom_score_adj"))
    finally:
        codecs.close()
    assert int(score) == 1000
    assert int(Path("/proc/self/oom_score_adj").read_text()) < 1000  # the worker is not


@pytest.mark.parametrize(("source_ts", "target_ts", "bits"), [
    (ExplicitVRLittleEndian, ImplicitVRLittleEndian, 16),
    (ExplicitVRLittleEndian, ImplicitVRLittleEndian, 8),
    (ImplicitVRLittleEndian, ExplicitVRLittleEndian, 16),
])
def test_explicit_and_implicit_vr_past_the_budget_are_converted_without_decoding(
        tmp_path: Path, source_ts: str, target_ts: str, bits: int,
        caplog: pytest.LogCaptureFixture) -> None:
    """An Implicit-only PACS (many older ones) still gets a native instance too large to
    decode: between these two syntaxes the pixel data's bytes do not change
    (workers/transforms/native_resplice.py)."""
    (tmp_path / "in").mkdir()
    source = write_native(tmp_path / "in", bits=bits, rows=40, columns=30, frames=3)
    if source_ts == ImplicitVRLittleEndian:
        ds = pydicom.dcmread(source)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(source, enforce_file_format=True)
    job = make_header(destinations=("pacs",), rules=("all",), transfer_syntax_uid=source_ts)
    preparer = _preparer(tmp_path, 100, _NoCodecs(), (JPEG2000Lossless, target_ts))

    counted = REGISTRY.get_sample_value("dicom_router_transcodes_total",
                                        {"destination": "pacs", "how": "without_decoding"})
    with caplog.at_level(logging.INFO, logger="workers.prepare"):
        prepared = preparer.prepare(job, "pacs", source)

    assert prepared.job.transfer_syntax_uid == target_ts
    # The README says such a conversion is logged, and where it went; and it is counted.
    assert "without decoding its pixel data (too large to decode) for pacs" in caplog.text
    assert REGISTRY.get_sample_value("dicom_router_transcodes_total", {
        "destination": "pacs", "how": "without_decoding"}) == (counted or 0) + 1
    original, copy = pydicom.dcmread(source), pydicom.dcmread(prepared.path)
    assert copy.file_meta.TransferSyntaxUID == target_ts
    assert copy.PixelData == original.PixelData
    assert [e.tag for e in copy] == [e.tag for e in original]
    # (a private element's VR is not in Implicit VR: it reads back as bytes, as ever)
    assert [(e.tag, e.value) for e in copy if not e.tag.is_private] == \
        [(e.tag, e.value) for e in original if not e.tag.is_private]
    assert copy.original_encoding[0] == (target_ts == ImplicitVRLittleEndian)
    assert any("without decoding" in str(change) for change in prepared.changes)


def test_a_compressed_instance_past_the_budget_is_still_refused_for_an_implicit_pacs(
        tmp_path: Path) -> None:
    source = write_compressed(tmp_path / "in", RLELossless, rows=32, columns=32, frames=4)
    job = make_header(destinations=("pacs",), rules=("all",), transfer_syntax_uid=RLELossless)
    preparer = _preparer(tmp_path, 100, _NoCodecs(), (ImplicitVRLittleEndian,))
    with pytest.raises(DeliveryError, match="transcode_max_decoded_bytes"):
        preparer.prepare(job, "pacs", source)
    assert not list(preparer.spool.relay.iterdir())
