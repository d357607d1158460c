"""What every spawned router process does first: logging, signals, and a watch on its parent."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from types import FrameType

from router.core.log_safety import SafeFormatter, SafeLogFilter, install_thread_hook

# How often a socketserver loop looks for a shutdown request: its shutdown() waits for that
# look, and the default (0.5 s) added up to seconds per stop across the listeners.
SERVER_POLL_SECONDS = 0.05

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


def setup_logging(level: str, log_format: str = "text") -> None:
    """Text for a terminal, or one JSON object a line for a log pipeline (`log_format`).

    Either way every record is escaped, bounded and rate-limited (router.log_safety): peers
    control much of what gets logged.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SAFE_FILTER)
    if log_format == "json":
        from router.core.log_context import ContextFilter, json_formatter

        handler.setFormatter(json_formatter())
        handler.addFilter(ContextFilter())
    else:
        handler.setFormatter(SafeFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Python warnings (pydicom's "Expected explicit VR...") as records in this format, not
    # raw lines on stderr that break one-JSON-object-a-line.
    logging.captureWarnings(True)
    # pydicom's warn_and_log both logs (logger "pydicom") and warns: one record, not two.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
    warnings.formatwarning = _one_line  # the others: no file:line and source line
    install_thread_hook()


_SAFE_FILTER = SafeLogFilter()  # one per process: a reload keeps its rate-limit counts


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM stops this process; SIGINT is left to the supervisor, which stops us in order."""
    set_on_signal([signal.SIGTERM], stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def set_on_signal(signums: list[int], event: threading.Event,
                  announce: Callable[[int], None] | None = None) -> None:
    """Set `event` (after `announce(signum)`) when one of `signums` arrives."""

    def act(signum: int) -> None:
        if announce is not None:
            announce(signum)
        event.set()

    run_on_signal(signums, act)


def run_on_signal(signums: list[int], action: Callable[[int], None]) -> None:
    """Run `action(signum)` on a thread of its own, one signal after the other, when one of
    `signums` arrives.

    Not in the handler itself: a Python handler runs in the main thread between two
    bytecodes, possibly while that thread holds a lock the action needs, such as an Event's
    inside `event.wait()` (not reentrant): an acceptor hung so at SIGTERM in a CI run
    (2026-12-06), and its supervisor stopped without it. Logging takes locks too. The
    handler only writes the signal's number to a pipe, which the thread reads.
    """
    reader, writer = os.pipe()
    os.set_blocking(writer, False)

    def relay() -> None:
        while number := os.read(reader, 1):
            try:
                action(number[0])
            except Exception:  # the next signal must still be acted on
                logging.getLogger(__name__).exception("acting on signal %d failed", number[0])
            if _poll_wakeup is not None:
                _poll_wakeup.poke()

    threading.Thread(target=relay, name="signals", daemon=True).start()

    def handler(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(BlockingIOError):  # full: the action runs anyway
            os.write(writer, bytes([signum]))

    for signum in signums:
        signal.signal(signum, handler)


# The process's SignalWakeup, if its loop has one: woken again once a signal's action ran.
_poll_wakeup: SignalWakeup | None = None


class SignalWakeup:
    """A socket that turns readable when a signal arrives, for a loop blocked in zmq poll.

    A signal the kernel hands to another thread (zmq and pynetdicom start several) reaches the
    Python handler only when the main thread runs bytecode again; until then a poll with a
    one-second timeout sleeps on, and a stop took seconds. The C-level handler writes to this
    socket from whichever thread took the signal, so the poll returns at once.
    """

    def __init__(self) -> None:
        global _poll_wakeup
        self.reader, writer = socket.socketpair()
        self.reader.setblocking(False)
        writer.setblocking(False)
        self._writer = writer  # kept open for the life of the process
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        _poll_wakeup = self

    def poke(self) -> None:
        """Wake the poll once more, after a signal's action ran (run_on_signal): the signal's
        own wakeup may have been drained before that thread set the stop event, and the loop
        then slept a whole poll (a second) before it saw it, at every stop and reload."""
        with contextlib.suppress(OSError):  # full: a wakeup is pending anyway
            self._writer.send(b"\0")

    def fileno(self) -> int:
        return self.reader.fileno()

    def drain_if_ready(self, ready: Mapping[object, int]) -> None:
        """Empty the socket when a zmq poll (`dict(poller.poll())`) found it readable.

        pyzmq (27) keys a plain socket's readiness by its file descriptor, not by the object
        registered: a loop that looked for the object never drained it, so after the first
        signal (a SIGHUP reload) every poll returned at once and the broker and workers spun
        at full CPU, doing their per-turn work over every destination thousands of times a
        second."""
        if self in ready or self.fileno() in ready:
            self.drain()

    def drain(self) -> None:
        """Empty the socket (a SIGHUP writes to it too); the handlers do the work."""
        try:
            while self.reader.recv(256):
                pass
        except BlockingIOError:
            pass


def watch_parent(stop: threading.Event, on_orphaned: Callable[[], None] | None = None) -> None:
    """Stop when the supervisor dies (even by kill -9): an orphan must not keep the port."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                logging.getLogger(__name__).error("supervisor is gone; stopping")
                stop.set()
                if on_orphaned:
                    on_orphaned()
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
    """A captured warning's log message: what it says, not where Python raised it."""
    return f"{category.__name__}: {message}"
