"""Transcoding in a process of its own, started when a destination first needs it.

The pixel codecs (numpy, GDCM, Pillow: about 50 MB in each process that imports them) are
hidden from the worker (router/service/supervisor.py, PIXEL_CODECS): most routers never
transcode, and a worker that never does stays small. The first transcode starts one codec
process (multiprocessing spawn, a fresh interpreter with the codecs available); it serves the
worker's transcodes one at a time and exits after IDLE_SECONDS without work.

It also keeps a codec that crashes on a hostile or broken image (a segfault in a C library)
from taking the worker and its other deliveries with it: the delivery gets a transient
DeliveryError (retried, then dead-lettered) and the next transcode starts a new process.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from router.core.errors import DeliveryError

log = logging.getLogger(__name__)

IDLE_SECONDS = 60.0
T = TypeVar("T")


@dataclass(frozen=True)
class Transcoded:
    """What the codec process did: the syntax written, or why nothing could be."""

    target_ts: str | None  # None: no accepted syntax can be produced from the source
    source_name: str
    target_name: str
    error: str = ""  # a TranscodeError's message: this instance cannot be transcoded


def transcode_in_child(source: Path, target: Path, source_ts: str,
                       accepted: Sequence[str]) -> Transcoded:
    """Runs in the codec process: choose the target syntax and write the copy."""
    from workers.transforms.transcode import (
        TranscodeError,
        choose_target,
        describe,
        transcode_file,
    )

    target_ts = choose_target(source_ts, list(accepted))
    if target_ts is None:
        return Transcoded(None, describe(source_ts), "")
    try:
        transcode_file(source, target, target_ts)
    except TranscodeError as exc:
        return Transcoded(target_ts, describe(source_ts), describe(target_ts), str(exc))
    return Transcoded(target_ts, describe(source_ts), describe(target_ts))


class CodecProcess:
    """One lazily started codec process per worker, shared by its delivery threads."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._busy = 0
        self._idle_timer: threading.Timer | None = None

    def transcode(self, source: Path, target: Path, source_ts: str,
                  accepted: Sequence[str]) -> Transcoded:
        try:
            return self.run(transcode_in_child, source, target, source_ts, list(accepted))
        except DeliveryError:
            target.unlink(missing_ok=True)
            raise

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in the codec process; DeliveryError (transient) if it dies."""
        pool = self._acquire()
        try:
            return pool.submit(function, *args).result()
        except BrokenProcessPool as exc:
            self._discard(pool)
            raise DeliveryError(
                "transcode", "the codec process died while transcoding this instance "
                "(a pixel codec crash or out of memory); retried in a new process",
                transient=True) from exc
        finally:
            self._release()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if self._idle_timer is not None:
                self._idle_timer.cancel()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _acquire(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            if self._pool is None:
                log.info("starting a codec process for transcoding")
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            self._busy += 1
            return self._pool

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1
            if self._busy == 0 and self._pool is not None:
                self._idle_timer = threading.Timer(self.idle_seconds, self._close_if_idle)
                self._idle_timer.daemon = True
                self._idle_timer.start()

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._busy or self._pool is None:
                return
            pool, self._pool = self._pool, None
        log.info("codec process idle for %.0f s: stopped", self.idle_seconds)
        pool.shutdown(wait=True)

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)
