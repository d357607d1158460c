"""Send DICOM files to a peer as they are: the logic behind `dicom-router send`.

Files are read header-only, grouped by (SOP class, exact transfer syntax) into associations
of at most 128 presentation contexts, each context with exactly one transfer syntax, and
streamed from disk without decoding (pynetdicom's chunked send). N threads each open their
own associations and send their share of the files. Nothing here prints: the CLI shows the
progress and the summary, from the `Outcome`s this module reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import ssl
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import build_context

from router.core.config import DEFAULT_MAX_PDU
from router.core.dimse_status import is_success, is_warning
from router.core.errors import RouterError
from router.core.tls import failure_reason
from router.dicom.net import sends_files_as_they_are, set_nodelay

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index, not an instance
_FILE_META = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
NO_CONTEXT = "no accepted presentation context"
ABORTED = "aborted by Ctrl-C while in progress"
_ALERT_WAIT = 2.0  # seconds a TLS probe waits for an alert after its handshake

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"

Pair = tuple[str, str]  # (SOP class UID, transfer syntax UID)


class NotDicom(RouterError):
    """A file that cannot be sent as a DICOM Part 10 instance; the message says why."""


class AssociationError(RouterError):
    """No association: refused connection, rejection, abort. A usage problem (exit 2)."""


class NoContextAccepted(RouterError):
    """The peer accepted the association but none of its presentation contexts."""


@dataclass(frozen=True)
class Instance:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    size: int

    @property
    def pair(self) -> Pair:
        return (self.sop_class, self.transfer_syntax)


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class Scan:
    instances: list[Instance] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


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


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = "DICOM-SEND"
    max_pdu: int = DEFAULT_MAX_PDU
    tls: ssl.SSLContext | None = None
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


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


@dataclass(frozen=True)
class Summary:
    files: int  # DICOM files found
    requested: int  # C-STORE requests sent
    succeeded: int
    warnings: dict[str, int]
    failed: dict[str, int]  # refused: by status in hex, or by problem (no context)
    unknown: dict[str, int]  # sent without an answer, by problem: the peer may have kept them
    unknown_files: list[Path]
    comments: dict[str, str]  # an example ErrorComment per failure label
    not_sent: int
    skipped: int
    bytes_sent: int
    elapsed: float


# --- addresses and files ---------------------------------------------------------------------

def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:11112)")
    return host, int(port)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The files given, and every file under the folders given (recursively, sorted)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def read_header(path: Path) -> Instance:
    """The facts a C-STORE of the file needs, read without its pixel data; NotDicom if none."""
    try:
        ds = dcmread(path, stop_before_pixels=True,
                     specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except InvalidDicomError:
        raise NotDicom("not a DICOM Part 10 file (no 'DICM' prefix)") from None
    except Exception as exc:  # pydicom raises many kinds of errors on files that are not DICOM
        raise NotDicom(str(exc).split("\n")[0] or type(exc).__name__) from None
    meta = ds.file_meta
    missing = [keyword for keyword in _FILE_META if not meta.get(keyword)]
    if missing:
        raise NotDicom(f"no {', '.join(missing)} in its file meta")
    if meta.MediaStorageSOPClassUID == MEDIA_STORAGE_DIRECTORY:
        raise NotDicom("a DICOMDIR (an index of files), not an instance")
    return Instance(path, str(meta.MediaStorageSOPClassUID),
                    str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID),
                    path.stat().st_size)


def scan(paths: Iterable[Path], on_file: Callable[[], None] | None = None) -> Scan:
    found = Scan()
    for path in iter_files(paths):
        try:
            found.instances.append(read_header(path))
        except NotDicom as exc:
            found.skipped.append(Skipped(path, str(exc)))
        except OSError as exc:
            found.skipped.append(Skipped(path, exc.strerror or str(exc)))
        if on_file is not None:
            on_file()
    return found


# --- planning ----------------------------------------------------------------------------------

def split(instances: list[Instance], associations: int) -> list[list[Instance]]:
    """Deal the files round-robin into at most `associations` non-empty shares."""
    shares = [instances[n::associations] for n in range(associations)]
    return [share for share in shares if share]


def batches(instances: list[Instance], max_contexts: int = MAX_CONTEXTS) -> list[list[Instance]]:
    """Group files so that no group needs more than `max_contexts` distinct pairs."""
    pairs = sorted({instance.pair for instance in instances})
    group_of = {pair: n // max_contexts for n, pair in enumerate(pairs)}
    groups: list[list[Instance]] = [[] for _ in range(-(-len(pairs) // max_contexts))]
    for instance in instances:
        groups[group_of[instance.pair]].append(instance)
    return groups


# --- associations ------------------------------------------------------------------------------

def _on_connected(event: Any) -> None:
    set_nodelay(event)
    event.assoc.send_connected = True  # tells a refused connection from a later failure


def _application_entity(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_ae)
    ae.maximum_pdu_size = peer.max_pdu
    ae.connection_timeout = peer.connect_timeout
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.dimse_timeout
    return ae


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _tls_problem(peer: Peer, tls: ssl.SSLContext) -> str | None:
    """Why TLS with the peer fails, from a probe; None when the probe sees no problem.

    A TLS 1.3 server checks the client certificate after the handshake, so the probe also
    waits briefly for an alert: a DICOM peer otherwise stays silent until it is spoken to.
    """
    try:
        with socket.create_connection((peer.host, peer.port), timeout=peer.connect_timeout) \
                as raw, tls.wrap_socket(raw, server_hostname=peer.host) as secure:
            secure.settimeout(_ALERT_WAIT)
            secure.recv(1)
    except ssl.SSLError as exc:
        detail = getattr(exc, "verify_message", None) or exc.reason
        return f"TLS failed: {failure_reason(exc)} ({detail})"
    except OSError:
        return None
    return None


def _diagnose_connection(peer: Peer) -> str:
    """pynetdicom does not say why a connection failed: a short probe does."""
    try:
        socket.create_connection((peer.host, peer.port), timeout=peer.connect_timeout).close()
    except OSError as exc:
        return _lower_first(exc.strerror or str(exc) or type(exc).__name__)
    problem = _tls_problem(peer, peer.tls) if peer.tls is not None else None
    return problem or "the connection failed"


def _with_tls_problem(message: str, peer: Peer) -> str:
    problem = _tls_problem(peer, peer.tls) if peer.tls is not None else None
    return f"{message}: {problem}" if problem else message


def _rejection(assoc: Association) -> str:
    answer: Any = assoc.acceptor.primitive
    return (f"{_lower_first(answer.reason_str)} ({_lower_first(answer.result_str)}, "
            f"source: {_lower_first(answer.source_str)})")


def _failure(assoc: Association, peer: Peer) -> RouterError:
    if not getattr(assoc, "send_connected", False):
        return AssociationError(f"cannot connect to {peer}: {_diagnose_connection(peer)}")
    answer = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_aborted and getattr(answer, "result", None) == 0:
        # Accepted, but no proposed context was: pynetdicom aborts such an association.
        return NoContextAccepted(f"{peer} accepted none of the proposed presentation contexts")
    if assoc.is_rejected:
        return AssociationError(f"association rejected by {peer}: {_rejection(assoc)}")
    if assoc.is_aborted:
        return AssociationError(_with_tls_problem(
            f"{peer} aborted the association during negotiation", peer))
    return AssociationError(_with_tls_problem(
        f"{peer} closed the connection during negotiation", peer))


def associate(ae: AE, peer: Peer, pairs: Iterable[Pair]) -> Association:
    """An association proposing one context per pair, each with exactly its one syntax."""
    contexts = [build_context(sop_class, syntax) for sop_class, syntax in pairs]
    tls_args = (peer.tls, peer.host) if peer.tls is not None else None
    assoc = ae.associate(peer.host, peer.port, contexts=contexts, ae_title=peer.called_ae,
                         tls_args=tls_args, evt_handlers=[(evt.EVT_CONN_OPEN, _on_connected)])
    if not assoc.is_established:
        raise _failure(assoc, peer)
    return assoc


def _accepted(assoc: Association) -> set[Pair]:
    return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts}


def echo(peer: Peer) -> int:
    """C-ECHO the peer; its status (0x0000 is Success). AssociationError when there is no
    association, RouterError when no answer comes."""
    ae = _application_entity(peer)
    assoc = associate(ae, peer, [(VERIFICATION, IMPLICIT_VR_LE)])
    try:
        response: Any = assoc.send_c_echo()
    finally:
        _close(assoc)
    status = getattr(response, "Status", None)
    if status is None:
        raise RouterError(f"{peer} did not answer the C-ECHO (timeout or association lost)")
    return int(status)


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
    accepted = _accepted(assoc)
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


def _close(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()
    elif not assoc.is_aborted:
        assoc.abort()


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
            _close(assoc)
        if not tried and pending and not control.stop.is_set():
            raise AssociationError(f"{peer} dropped the association before any file was sent")


def send_share(peer: Peer, share: list[Instance], control: Control,
               report: Report) -> None:
    """One thread's work: its batches, one association at a time."""
    ae = _application_entity(peer)
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


# --- results -----------------------------------------------------------------------------------

def summarize(found: Scan, result: SendResult, elapsed: float) -> Summary:
    warnings: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    comments: dict[str, str] = {}
    for outcome in result.outcomes:
        if outcome.stored and outcome.status is not None and not is_success(outcome.status):
            warnings[outcome.label] += 1
        elif outcome.unknown:
            unknown[outcome.label] += 1
        elif not outcome.stored:
            failed[outcome.label] += 1
            if outcome.comment:
                comments.setdefault(outcome.label, outcome.comment)
    requested = [o for o in result.outcomes if o.requested]
    return Summary(
        files=len(found.instances), requested=len(requested),
        succeeded=sum(1 for o in result.outcomes if o.status is not None
                      and is_success(o.status)),
        warnings=dict(sorted(warnings.items())), failed=dict(sorted(failed.items())),
        unknown=dict(sorted(unknown.items())),
        unknown_files=[o.instance.path for o in result.outcomes if o.unknown],
        comments=comments, not_sent=len(found.instances) - len(result.outcomes),
        skipped=len(found.skipped), bytes_sent=sum(o.instance.size for o in requested),
        elapsed=elapsed,
    )


def exit_code(summary: Summary, result: SendResult) -> int:
    """2: no association (a usage problem); 1: a file not stored; 0: all stored."""
    if result.association_errors:
        return 2
    if summary.failed or summary.unknown or summary.not_sent or result.errors:
        return 1
    return 0
