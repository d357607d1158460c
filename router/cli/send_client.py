"""Send DICOM files to a peer as they are: the sending behind `dicom-router send`.

Files are read header-only (send_files.py), grouped by (SOP class, exact transfer syntax)
into associations of at most 128 presentation contexts, each context with exactly one
transfer syntax, and streamed from disk without decoding (pynetdicom's chunked send). N
threads each open their own associations and send their share of the files. Nothing here
prints: the CLI shows the progress and the summary (send_summary.py), from the `Outcome`s
this module reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset

from router.cli.send_association import (
    AssociationError,
    NoContextAccepted,
    Peer,
    accepted_pairs,
    application_entity,
    associate,
    close,
)
from router.cli.send_files import Instance, Pair, batches, split
from router.core.dimse_status import is_success, is_warning
from router.dicom.net import sends_files_as_they_are

NO_CONTEXT = "no accepted presentation context"
ABORTED = "aborted by Ctrl-C while in progress"


@dataclass(frozen=True)
class Outcome:
    """What became of one file: a DIMSE status, or `problem` when there is none."""

    instance: Instance
    status: int | None
    comment: str = ""
    problem: str = ""

    @property
    def requested(self) -> bool:
        """Whether a C-STORE request went out (a missing context stops it before)."""
        return self.problem != NO_CONTEXT

    @property
    def unknown(self) -> bool:
        """Sent (perhaps partly) with no answer: the peer may or may not have kept it."""
        return self.requested and self.status is None

    @property
    def stored(self) -> bool:
        return self.status is not None and (is_success(self.status) or is_warning(self.status))

    @property
    def label(self) -> str:
        """What the summary counts it under: the status in hex, or the problem."""
        return f"0x{self.status:04X}" if self.status is not None else self.problem



@dataclass
class SendResult:
    outcomes: list[Outcome] = field(default_factory=list)
    association_errors: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # unexpected ones, not the peer's doing
    interrupted: bool = False


class Control:
    """How the main thread steers the sending threads: `stop` (start no new file) and `abort`
    (A-ABORT every association in progress, from the main thread)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.aborted = threading.Event()
        self.interrupts = 0
        self._active: set[Association] = set()
        self._lock = threading.Lock()

    def opened(self, assoc: Association) -> None:
        with self._lock:
            self._active.add(assoc)
        if self.aborted.is_set():
            self._abort(assoc)

    def closed(self, assoc: Association) -> None:
        with self._lock:
            self._active.discard(assoc)

    def interrupt(self) -> int:
        """Ctrl-C: the first stops (the files in progress get their answer), the second
        aborts them. Returns how many there were."""
        self.interrupts += 1
        if self.interrupts == 1:
            self.stop.set()
        else:
            self.abort()
        return self.interrupts

    def abort(self) -> None:
        self.stop.set()
        self.aborted.set()
        with self._lock:
            active = list(self._active)
        for assoc in active:
            self._abort(assoc)

    @staticmethod
    def _abort(assoc: Association) -> None:
        with contextlib.suppress(Exception):  # already gone: nothing left to abort
            assoc.abort()
        # Wake a C-STORE waiting for its response now, not after its DIMSE timeout.
        assoc.dimse.msg_queue.put((None, None))



# --- sending -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _wire_file(instance: Instance) -> Iterator[Path]:
    """The file to stream: itself, or a copy with the pad byte a deflated dataset lacks.

    PS3.5 A.5: a deflated bitstream of odd length is padded with one trailing NUL (pydicom
    and DCMTK write it so); a peer refuses an odd-length fragment and aborts.
    """
    if instance.transfer_syntax != DeflatedExplicitVRLittleEndian or \
            (instance.size - split_dataset(instance.path)[1]) % 2 == 0:
        yield instance.path
        return
    with tempfile.NamedTemporaryFile(prefix="dicom-send-", suffix=".dcm") as padded:
        with instance.path.open("rb") as source:
            shutil.copyfileobj(source, padded)
        padded.write(b"\0")
        padded.flush()
        yield Path(padded.name)


def store(assoc: Association, instance: Instance, accepted: set[Pair]) -> Outcome:
    """C-STORE one file as it is on disk; never raises for the peer's or the network's doing."""
    if instance.pair not in accepted:
        return Outcome(instance, None, problem=NO_CONTEXT)
    try:
        with _wire_file(instance) as path:
            response: Any = assoc.send_c_store(path)
    except (OSError, RuntimeError, ValueError, AttributeError) as exc:
        return Outcome(instance, None, problem=f"not sent: {exc}")
    status = getattr(response, "Status", None)
    if status is None:
        return Outcome(instance, None, problem="no response (timeout or association lost)")
    return Outcome(instance, int(status), comment=str(getattr(response, "ErrorComment", "")))


Report = Callable[[Outcome], None]


def _send_on(assoc: Association, pending: deque[Instance], control: Control,
             report: Report) -> int:
    accepted = accepted_pairs(assoc)
    tried = 0
    while pending and assoc.is_established and not control.stop.is_set():
        outcome = store(assoc, pending.popleft(), accepted)
        if outcome.unknown and control.aborted.is_set():
            outcome = dataclasses.replace(outcome, problem=ABORTED)
        report(outcome)
        tried += 1
        if outcome.status is None and outcome.requested:
            # No answer (the peer aborted, or a timeout): pynetdicom may not have noticed the
            # abort yet, and a request sent now would wait its full timeout. Start afresh.
            assoc.abort()
            break
    return tried



def send_batch(ae: AE, peer: Peer, batch: list[Instance], control: Control,
               report: Report) -> None:
    """Send one batch, on a new association whenever the peer drops the current one."""
    pending = deque(batch)
    pairs = sorted({instance.pair for instance in batch})
    while pending and not control.stop.is_set():
        try:
            assoc = associate(ae, peer, pairs)
        except NoContextAccepted:
            while pending:
                report(Outcome(pending.popleft(), None, problem=NO_CONTEXT))
            return
        control.opened(assoc)
        try:
            tried = _send_on(assoc, pending, control, report)
        finally:
            control.closed(assoc)
            close(assoc)
        if not tried and pending and not control.stop.is_set():
            raise AssociationError(f"{peer} dropped the association before any file was sent")


def send_share(peer: Peer, share: list[Instance], control: Control,
               report: Report) -> None:
    """One thread's work: its batches, one association at a time."""
    ae = application_entity(peer)
    for batch in batches(share):
        send_batch(ae, peer, batch, control, report)


class _Sender:
    """Runs the shares in threads and collects what they report."""

    def __init__(self, peer: Peer, on_outcome: Report | None, control: Control) -> None:
        self.peer = peer
        self.on_outcome = on_outcome
        self.result = SendResult()
        self.control = control
        self._lock = threading.Lock()

    def report(self, outcome: Outcome) -> None:
        with self._lock:
            self.result.outcomes.append(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def run(self, share: list[Instance]) -> None:
        try:
            send_share(self.peer, share, self.control, self.report)
        except AssociationError as exc:
            self._fail(self.result.association_errors, str(exc))
        except Exception as exc:  # a bug: say so in the summary instead of a lost thread
            self._fail(self.result.errors, f"{type(exc).__name__}: {exc}")

    def _fail(self, where: list[str], message: str) -> None:
        with self._lock:
            if message not in where:
                where.append(message)
        self.control.stop.set()  # the other threads would meet the same refusal

    def join(self, threads: list[threading.Thread]) -> None:
        """Wait for every thread. Never let KeyboardInterrupt interrupt Thread.join: Python
        3.11 then marks a running thread as finished, and the summary would miss the answer
        to its file; the caller turns Ctrl-C into `control.stop` / `control.abort` instead."""
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
        self.result.interrupted = self.control.interrupts > 0


def send_all(instances: list[Instance], peer: Peer, associations: int = 1,
             on_outcome: Report | None = None, control: Control | None = None) -> SendResult:
    """Send every file over up to `associations` parallel associations, one thread each.

    `on_outcome` is called from those threads, once per file that was tried. `control`
    lets another thread (a SIGINT handler) stop or abort the sending.
    """
    if not sends_files_as_they_are():
        raise RuntimeError("configure_pynetdicom(chunked_send=True) first: files are sent as "
                           "they are, never decoded")
    control = control or Control()
    sender = _Sender(peer, on_outcome, control)
    threads = [threading.Thread(target=sender.run, args=(share,), name=f"send-{n}", daemon=True)
               for n, share in enumerate(split(instances, associations))]
    with _quiet_after_abort(control):
        for thread in threads:
            thread.start()
        sender.join(threads)
    return sender.result


@contextlib.contextmanager
def _quiet_after_abort(control: Control) -> Iterator[None]:
    """After an abort, a sending thread may still hand pynetdicom a data PDU; its state
    machine then raises InvalidEventError in its own thread, which we expect: no traceback."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if control.aborted.is_set() and args.exc_type.__name__ == "InvalidEventError":
            return
        default(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = default
