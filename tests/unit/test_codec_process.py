"""The worker's codec process: started on first use, survives nothing it should not."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from router.core.errors import DeliveryError
from tests.compressed_samples import native_dataset, write_ambiguous_implicit, write_native
from workers.transforms.codec_process import CodecProcess, transcode_in_child
from workers.transforms.transcode import describe, transcode_file


def test_work_runs_in_another_process_and_a_crash_is_a_transient_delivery_error() -> None:
    codecs = CodecProcess()
    try:
        child = codecs.run(os.getpid)
        assert child != os.getpid()
        with pytest.raises(DeliveryError) as raised:
            codecs.run(os._exit, 11)  # what a segfaulting codec looks like from here
        assert raised.value.transient
        # The next piece of work gets a new process.
        assert codecs.run(os.getpid) not in (child, os.getpid())
    finally:
        codecs.close()


def test_an_idle_codec_process_stops() -> None:
    codecs = CodecProcess(idle_seconds=0.2)
    try:
        codecs.run(os.getpid)
        deadline = time.monotonic() + 30
        while codecs.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not codecs.running
    finally:
        codecs.close()


def test_an_exception_in_the_codec_process_is_raised_in_the_worker() -> None:
    codecs = CodecProcess()
    try:
        with pytest.raises(ValueError):
            codecs.run(int, "not a number")
        assert codecs.run(int, "42") == 42  # the same process goes on serving
    finally:
        codecs.close()


_BUSY_WORKER = """
import os, sys, threading
from workers.transforms.codec_process import CodecProcess
codecs = CodecProcess()
print(codecs.run(os.getpid), flush=True)
# A long transcode; the codec process shares this stdout: it says when it has begun.
busy = "import time; print('busy', flush=True); time.sleep(600)"
threading.Thread(target=codecs.run, args=(exec, busy)).start()
sys.stdin.read()
"""


def test_a_busy_codec_process_dies_with_its_worker_killed_by_sigkill() -> None:
    """Between two pieces of work the codec process sees its worker's death as EOF on the
    pipe; in the middle of one only PR_SET_PDEATHSIG stops it. Otherwise it went on, and
    under a PID 1 that does not reap (the image) it ended as a zombie."""
    worker = subprocess.Popen([sys.executable, "-c", _BUSY_WORKER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    codec = int(worker.stdout.readline())
    assert worker.stdout.readline() == "busy\n"
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 20
    while _lives(codec):
        if time.monotonic() > deadline:
            os.kill(codec, signal.SIGKILL)
            raise AssertionError("the codec process outlived its worker")
        time.sleep(0.05)


def _lives(pid: int) -> bool:
    """Neither gone nor a zombie (reparented to an init that has yet to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] != "Z"


# Choosing among the destination's syntaxes ------------------------------------------------


def test_an_encoder_that_fails_on_the_image_gives_way_to_the_next_accepted_syntax(
        tmp_path: Path) -> None:
    """openjpeg cannot encode an image under 32 pixels (`opj_start_compress()`); the
    destination also takes RLE, which is what it gets, pixel for pixel."""
    source = write_native(tmp_path, "small.dcm", bits=16, rows=16, columns=16)
    target = tmp_path / "out.dcm"
    codecs = CodecProcess()
    try:  # through the codec process, as the worker does (the result crosses a pipe)
        done = codecs.transcode(source, target, ExplicitVRLittleEndian,
                                [JPEG2000Lossless, RLELossless])
    finally:
        codecs.close()
    assert (done.target_ts, done.error) == (RLELossless, ""), done
    assert [name for name, _ in done.failed] == [describe(JPEG2000Lossless)]
    assert "opj_start_compress" in done.failed[0][1]
    out = dcmread(target)
    assert out.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(out.pixel_array, dcmread(source).pixel_array)


def test_when_every_accepted_syntax_fails_the_error_names_each(tmp_path: Path) -> None:
    """32-bit pixels: JPEG-LS carries 16 bits at most, openjpeg 24; nothing is written."""
    ds = native_dataset(bits=16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = np.arange(64 * 64, dtype="<u4").tobytes()
    source = tmp_path / "wide.dcm"
    ds.save_as(source, enforce_file_format=True)
    target = tmp_path / "out.dcm"
    done = transcode_in_child(source, target, ExplicitVRLittleEndian,
                              [JPEGLSLossless, JPEG2000Lossless])
    assert done.error.startswith("no accepted syntax could be written: "), done.error
    assert f"{describe(JPEGLSLossless)} failed (cannot encode" in done.error
    assert f"{describe(JPEG2000Lossless)} failed (cannot encode" in done.error
    assert "bits_stored" in done.error  # openjpeg's own reason, not only the first one's
    assert not target.exists()


def test_one_candidate_that_fails_keeps_its_own_message(tmp_path: Path) -> None:
    source = write_native(tmp_path, "small.dcm", bits=16, rows=16, columns=16)
    done = transcode_in_child(source, tmp_path / "out.dcm", ExplicitVRLittleEndian,
                              [JPEG2000Lossless])
    assert done.target_ts == JPEG2000Lossless and not done.failed
    assert done.error.startswith(f"cannot encode this image as {describe(JPEG2000Lossless)}")


def test_a_codec_process_that_dies_on_one_syntax_gives_way_to_the_next(
        tmp_path: Path) -> None:
    """The codec process dies writing the first syntax (SIGXFSZ: its file size limit, set
    below what that syntax needs); the next syntax is written by a new process instead of
    the whole transcode being retried and failing the same way."""
    source = write_native(tmp_path, "ct.dcm", bits=16)
    sizes = {}
    for ts in (ExplicitVRBigEndian, JPEG2000Lossless):  # here: how big each one is
        transcode_file(source, tmp_path / "probe.dcm", ts)
        sizes[ts] = (tmp_path / "probe.dcm").stat().st_size
    assert sizes[ExplicitVRBigEndian] > sizes[JPEG2000Lossless] + 1024
    limit = sizes[JPEG2000Lossless] + 512
    target = tmp_path / "out.dcm"
    codecs = CodecProcess()
    try:
        codecs.run(signal.signal, signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it
        codecs.run(resource.setrlimit, resource.RLIMIT_FSIZE, (limit, limit))
        done = codecs.transcode(source, target, ExplicitVRLittleEndian,
                                [ExplicitVRBigEndian, JPEG2000Lossless])
    finally:
        codecs.close()
    assert (done.target_ts, done.error) == (JPEG2000Lossless, ""), done
    assert done.crashed == (describe(ExplicitVRBigEndian),)
    assert [name for name, _ in done.failed] == [describe(ExplicitVRBigEndian)]
    assert np.array_equal(dcmread(target).pixel_array, dcmread(source).pixel_array)


def test_a_codec_that_dies_on_every_syntax_names_each_and_sends_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The only syntax the destination accepts kills the codec process: a permanent error
    naming it (a `transcode` dead letter), not a retry that would die the same way."""
    source = write_native(tmp_path, "ct.dcm", bits=16)
    target = tmp_path / "out.dcm"
    codecs = CodecProcess()
    try:
        codecs.run(signal.signal, signal.SIGXFSZ, signal.SIG_DFL)
        codecs.run(resource.setrlimit, resource.RLIMIT_FSIZE, (1024, 1024))
        done = codecs.transcode(source, target, ExplicitVRLittleEndian, [ExplicitVRBigEndian])
    finally:
        codecs.close()
    assert done.error.startswith("the codec process died writing it"), done
    assert done.crashed == (describe(ExplicitVRBigEndian),)
    assert not target.exists()
    # The log said "trying the next in a new process" with no next to try.
    assert "no other syntax or encoder is left to try" in caplog.text
    assert "trying the next" not in caplog.text


@pytest.mark.parametrize("shape", [{"colour": True, "rows": 101, "columns": 99},
                                   {"colour": False, "rows": 3, "columns": 3}])
def test_an_odd_pixel_count_is_written_in_rle_without_killing_the_codec_process(
        tmp_path: Path, shape: dict[str, object]) -> None:
    """GDCM's RLE encoder, which pydicom tries first, abort()s on 101x99 RGB or 3x3 8-bit
    (gdcmRLECodec.cxx:531): the instance became a `transcode` dead letter. For an 8-bit
    image with an odd pixel count pydicom's own encoder goes first and writes it, pixel for
    pixel, in the first process (GDCM's stays first for the rest: 20 times faster)."""
    source = write_native(tmp_path, "odd.dcm", bits=8, **shape)
    target = tmp_path / "out.dcm"
    codecs = CodecProcess()
    try:
        first = codecs.run(os.getpid)
        done = codecs.transcode(source, target, ExplicitVRLittleEndian, [RLELossless])
        assert codecs.run(os.getpid) == first  # nothing died
    finally:
        codecs.close()
    assert (done.target_ts, done.error, done.crashed) == (RLELossless, "", ()), done
    got = dcmread(target)
    assert got.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(got.pixel_array, dcmread(source).pixel_array)


def test_a_codec_process_that_dies_in_one_encoder_retries_the_syntax_with_the_next(
        tmp_path: Path) -> None:
    """RLE has two encoders (GDCM's, then pydicom's for a 16-bit image): a process that dies
    in the first no longer gives up the syntax; a new one writes it with the second."""
    source = write_native(tmp_path, "ct.dcm", bits=16)
    target = tmp_path / "out.dcm"
    codecs = CodecProcess()
    try:
        codecs.run(signal.signal, signal.SIGXFSZ, signal.SIG_DFL)
        codecs.run(resource.setrlimit, resource.RLIMIT_FSIZE, (1024, 1024))
        done = codecs.transcode(source, target, ExplicitVRLittleEndian, [RLELossless])
    finally:
        codecs.close()
    assert (done.target_ts, done.error) == (RLELossless, ""), done
    assert done.crashed == (f"{describe(RLELossless)} by the gdcm encoder",)
    assert np.array_equal(dcmread(target).pixel_array, dcmread(source).pixel_array)


def test_pydicom_failing_with_another_exception_is_a_reason_not_an_internal_error(
        tmp_path: Path) -> None:
    """pydicom cannot resolve an ambiguous 'US or SS' element without Pixel Representation
    (AttributeError, not a TranscodeError): it was raised in the worker, an `internal`
    failure retried; it is the reason of a `transcode` dead letter."""
    source = write_ambiguous_implicit(tmp_path)
    done = transcode_in_child(source, tmp_path / "out.dcm", ImplicitVRLittleEndian,
                              [ExplicitVRLittleEndian, ExplicitVRBigEndian])
    assert done.error.startswith("cannot read ambiguous.dcm to transcode it: AttributeError: "
                                 "Failed to resolve ambiguous VR for tag (0028,0106)"), done
    assert not (tmp_path / "out.dcm").exists()

