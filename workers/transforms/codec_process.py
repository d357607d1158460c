"""Transcoding in a process of its own, started when a destination first needs it.

The pixel codecs (numpy, GDCM, Pillow: about 50 MB in each process that imports them) are
hidden from the worker (router/service/child_process.py, PIXEL_CODECS): most routers never
transcode, and a worker that never does stays small. The first transcode starts one codec
process (multiprocessing spawn, a fresh interpreter with the codecs available); it serves the
worker's transcodes one at a time and exits after IDLE_SECONDS without work.

It also keeps a codec that crashes on a hostile or broken image (a segfault in a C library)
from taking the worker and its other deliveries with it. One that dies writing one of the
destination's syntaxes is replaced and the next syntax is tried; one that dies reading or
decoding the instance fails the delivery with a transient DeliveryError (retried, then
dead-lettered) and the next transcode starts a new process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar, cast

from router.core.errors import DeliveryError

log = logging.getLogger(__name__)

IDLE_SECONDS = 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
T = TypeVar("T")


@dataclass(frozen=True)
class Transcoded:
    """What the codec process did: the syntax written, or why nothing could be."""

    target_ts: str | None  # None: no accepted syntax can be produced from the source
    source_name: str
    target_name: str
    error: str = ""  # every candidate failed (each named here): this instance cannot be sent
    failed: tuple[tuple[str, str], ...] = ()  # (syntax, why) of those failed before one worked
    crashed: tuple[str, ...] = ()  # the syntaxes a codec process died on


class CodecDied(DeliveryError):
    """The codec process died; `candidate` is the index of the attempt (a syntax and an
    encoder) it was writing (transcode_in_child), or -1 if it was not writing one."""

    def __init__(self, message: str, candidate: int, more: bool = False) -> None:
        super().__init__("transcode", message, transient=True)
        self.candidate = candidate
        self.more = more  # another attempt follows the one it died on


CRASHED = "the codec process died writing it (a pixel codec crash or out of memory)"
_PROGRESS: Any = None  # in the codec process: the shared ints of CodecProcess._start


def transcode_in_child(source: Path, target: Path, source_ts: str,
                       accepted: Sequence[str], crashed: Sequence[int] = (),
                       by_frame: bool = False) -> Transcoded:
    """Runs in the codec process: write the copy in the first accepted syntax that works.

    Candidates come in the destination's order (``target_candidates``), each tried with its
    encoder plugins one at a time (``encoder_plugins``): an attempt that fails on this image
    gives way to the next, as README "Transcoding" promises ("the first of them it can be
    converted to is sent"): a TranscodeError, any other exception of a codec, or
    (`crashed`, the attempts' indexes) an earlier codec process dying on it. The instance
    is read and decoded once for all of them. `by_frame` (an instance too large to decode
    whole): each attempt is written one frame at a time instead (frame_transcode.py).
    """
    from workers.transforms.transcode import (
        TranscodeError,
        describe,
        load_decoded,
        target_candidates,
        transcode_file,
    )

    candidates = target_candidates(source_ts, list(accepted))
    if not candidates:
        return Transcoded(None, describe(source_ts), "")
    if candidates == [source_ts]:
        transcode_file(source, target, source_ts)  # accepted as is: a copy
        return Transcoded(source_ts, describe(source_ts), describe(source_ts))
    if by_frame:
        return _by_frame_in_child(source, target, source_ts, candidates, crashed)
    last = candidates[-1]
    try:
        decoded = load_decoded(source, source_ts)  # fails alike for every syntax
    except OSError:
        raise  # the spool's disk, not the instance: retried
    except Exception as exc:  # TranscodeError, or pydicom's own on an odd dataset
        why = str(exc) if isinstance(exc, TranscodeError) else \
            f"cannot read {source.name} to transcode it: {type(exc).__name__}: {exc}"
        dead = tuple(_attempts(candidates)[i].name for i in crashed)
        return Transcoded(last, describe(source_ts), describe(last), why, crashed=dead)
    attempts = _attempts(candidates, decoded)  # the image decides the encoders' order
    return _try_each(attempts, crashed, target, (source_ts, last),
                     lambda attempt, more: partial(_write_decoded, decoded, more, target,
                                                   attempt))


@dataclass(frozen=True)
class _Attempt:
    """One syntax written with one encoder plugin ("" for a native syntax)."""

    syntax: str
    plugin: str
    name: str  # the syntax, and the plugin if the syntax has several


def _attempts(candidates: Sequence[str], decoded: Any = None) -> list[_Attempt]:
    """Every (syntax, plugin) to try, in order: the same list in every codec process (it
    depends on the image alone), so that an index names the attempt a process died on."""
    from workers.transforms.transcode import describe, encoder_plugins

    attempts = []
    for ts in candidates:
        plugins = encoder_plugins(ts, decoded)
        attempts += [_Attempt(ts, plugin, describe(ts) if len(plugins) == 1
                              else f"{describe(ts)} by the {plugin} encoder")
                     for plugin in plugins]
    return attempts


def _write_decoded(decoded: Any, copy: bool, target: Path, attempt: _Attempt) -> None:
    """Write `decoded` (a copy of it if another attempt may follow) as `attempt` says."""
    from workers.transforms.transcode import write_as

    write_as(deepcopy(decoded) if copy else decoded, target, attempt.syntax, attempt.plugin)


def _write_candidate(write: Callable[[], None], target: Path,
                     progress: tuple[int, int]) -> str | None:
    """Write one attempt to `target` (`write`): None, or why it failed. OSError (the
    spool's disk) is not the syntax's fault: it is raised. `progress` (this attempt's
    index, the number of attempts) tells the worker which one a crash was on, and whether
    another one is left."""
    from workers.transforms.transcode import TranscodeError

    if _PROGRESS is not None:
        _PROGRESS[1] = progress[1]
        _PROGRESS[0] = progress[0]
    try:
        write()
    except TranscodeError as exc:
        return str(exc)
    except OSError:
        raise
    except Exception as exc:  # a codec's own failure on this image: try the next syntax
        target.unlink(missing_ok=True)
        return f"{type(exc).__name__}: {exc}"
    finally:
        if _PROGRESS is not None:
            _PROGRESS[0] = -1
    return None


def _by_frame_in_child(source: Path, target: Path, source_ts: str,
                       candidates: Sequence[str], crashed: Sequence[int]) -> Transcoded:
    """transcode_in_child for an instance too large to decode whole: the candidates
    frame_transcode.py can write, each attempt streamed one frame at a time from the file."""
    from workers.transforms.frame_transcode import (
        by_frame_supported,
        read_head,
        write_by_frame,
    )
    from workers.transforms.transcode import TranscodeError, describe

    last = candidates[-1]
    supported = [ts for ts in candidates if by_frame_supported(source_ts, ts)]
    if not supported:
        return Transcoded(last, describe(source_ts), describe(last),
                          f"frame-by-frame transcoding cannot write {describe(source_ts)} as "
                          f"{' or '.join(describe(ts) for ts in candidates)}")
    try:
        attempts = _attempts(supported, read_head(source))
    except TranscodeError as exc:
        return Transcoded(last, describe(source_ts), describe(last), str(exc))
    return _try_each(attempts, crashed, target, (source_ts, last),
                     lambda attempt, _: partial(write_by_frame, source, target, attempt.syntax,
                                                attempt.plugin))


def _try_each(attempts: list[_Attempt], crashed: Sequence[int], target: Path,
              syntaxes: tuple[str, str],
              writer: Callable[[_Attempt, bool], Callable[[], None]]) -> Transcoded:
    """Each attempt in turn (but those a codec process died on), until one is written:
    `writer(attempt, more)` gives what writes it (`more`: another attempt may follow).
    `syntaxes`: the source's, and the last candidate's (named when none is written)."""
    from workers.transforms.transcode import describe

    source_ts, last = syntaxes
    failed: list[tuple[str, str]] = [(attempts[i].name, CRASHED) for i in crashed]
    dead = tuple(name for name, _ in failed)
    tries = [(i, attempt) for i, attempt in enumerate(attempts) if i not in crashed]
    for n, (index, attempt) in enumerate(tries):
        failure = _write_candidate(writer(attempt, n < len(tries) - 1), target,
                                   (index, len(attempts)))
        if failure is None:
            return Transcoded(attempt.syntax, describe(source_ts), describe(attempt.syntax),
                              failed=tuple(failed), crashed=dead)
        failed.append((attempt.name, failure))
    return Transcoded(last, describe(source_ts), describe(last), _all_failed(failed),
                      crashed=dead)


def _all_failed(failed: list[tuple[str, str]]) -> str:
    """The dead letter's message: each syntax tried and why it could not be written."""
    if len(failed) == 1:
        return failed[0][1]  # TranscodeError's message already names the syntax
    return "no accepted syntax could be written: " + "; ".join(
        f"{name} failed ({why})" for name, why in failed)


def _die_with(parent: int) -> None:
    """Be killed when the worker dies, even in the middle of a long transcode (the pipe's
    EOF is only seen between two pieces of work): an orphan would go on decoding for
    nothing and, under a PID 1 that does not reap, stay a zombie. PR_SET_PDEATHSIG fires
    when the thread that started us ends: the worker's delivery threads live as long as
    it does, and a codec process killed otherwise is CodecDied, retried in a new one."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("cannot ask to die with the worker (prctl: %s)",
                    os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _first_to_go() -> None:
    """Be the process the kernel's OOM killer picks first: a transcode holds about three
    times the decoded pixel data, and when memory runs out the acceptor or the broker must
    not be the one killed (a codec process that dies is a retried delivery). Raising one's
    own score needs no privilege."""
    if sys.platform != "linux":
        return
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError as exc:  # not Linux, or a /proc mounted read-only
        log.warning("cannot ask to be the OOM killer's first choice (%s)", exc)


def _serve(connection: Connection, progress: Any = None, parent: int | None = None) -> None:
    """The codec process: run what the worker sends until it sends None or goes away."""
    if parent is not None:
        _die_with(parent)
        _first_to_go()
    global _PROGRESS
    _PROGRESS = progress
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        function, args = request
        try:
            connection.send((True, function(*args)))
        except Exception as exc:  # returned to the worker, which raises it there
            connection.send((False, exc))


class CodecProcess:
    """One lazily started codec process per worker; its delivery threads take turns."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()  # one piece of work at a time, like one codec thread
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None
        self._progress: Any = None  # [the attempt being written, of how many] (_write_candidate)
        self._last_used = 0.0
        self._idle_timer: threading.Timer | None = None

    @property
    def running(self) -> bool:
        return self._process is not None

    def transcode(self, source: Path, target: Path, source_ts: str,
                  accepted: Sequence[str], by_frame: bool = False) -> Transcoded:
        """Transcode in the codec process (`by_frame`: one frame at a time); one that dies
        writing a syntax is replaced, and the next syntax is tried in the new one
        (DeliveryError, transient, if it died elsewhere: reading, decoding, or on a syntax
        it had already died on)."""
        crashed: list[int] = []
        while True:
            try:
                return self.run(transcode_in_child, source, target, source_ts,
                                list(accepted), tuple(crashed), by_frame)
            except CodecDied as exc:
                target.unlink(missing_ok=True)
                if exc.candidate < 0 or exc.candidate in crashed:
                    raise
                crashed.append(exc.candidate)
                log.warning("the codec process died writing %s (attempt %d: a syntax the "
                            "destination accepts, with one encoder); %s", source.name,
                            exc.candidate + 1, "trying the next in a new process" if exc.more
                            else "no other syntax or encoder is left to try")
            except DeliveryError:
                target.unlink(missing_ok=True)
                raise

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in the codec process; CodecDied (transient) if it dies."""
        with self._lock:
            connection = self._start()
            self._progress[0] = -1
            try:
                connection.send((function, args))
                ok, value = connection.recv()
            except (EOFError, OSError) as exc:
                candidate, count = int(self._progress[0]), int(self._progress[1])
                self._stop(wait=0.0)
                raise CodecDied(
                    "the codec process died while transcoding this instance "
                    "(a pixel codec crash or out of memory); retried in a new process",
                    candidate, more=0 <= candidate < count - 1) from exc
            finally:
                self._last_used = time.monotonic()
                self._arm_idle_timer()
        if not ok:
            raise value
        return cast(T, value)

    def close(self) -> None:
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._stop(wait=2.0)

    def _start(self) -> Connection:
        if self._connection is not None and self._process is not None \
                and self._process.is_alive():
            return self._connection
        self._stop(wait=0.0)
        log.info("starting a codec process for transcoding")
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._progress = context.Array("i", [-1, 0], lock=False)
        # Daemonic: a worker that exits stops it; PR_SET_PDEATHSIG (_die_with): a worker
        # that is killed too.
        process = context.Process(target=_serve, name="codec", daemon=True,
                                  args=(theirs, self._progress, os.getpid()))
        process.start()
        theirs.close()  # so that its death is EOF here
        self._process, self._connection = process, ours
        return ours

    def _stop(self, wait: float) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.send(None)
            connection.close()
        if process is not None:
            process.join(wait)
            if process.is_alive():
                process.terminate()
                process.join(5)

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = threading.Timer(self.idle_seconds, self._close_if_idle)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._process is None or \
                    time.monotonic() - self._last_used < self.idle_seconds * 0.9:
                return
            self._stop(wait=2.0)
        log.info("codec process idle for %.0f s: stopped", self.idle_seconds)
