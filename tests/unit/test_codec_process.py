"""The worker's codec process: started on first use, survives nothing it should not."""

from __future__ import annotations

import os
import time

import pytest

from router.core.errors import DeliveryError
from workers.transforms.codec_process import CodecProcess


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
