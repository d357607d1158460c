"""`dicom-router send PATH... --to HOST:PORT`: send files as they are, to test a route or load it.

Exit codes: 0 every file stored (success or warning), 1 a file was not stored or its outcome
is unknown, 2 a usage problem (bad arguments, no files, or no association: refused, rejected,
TLS failure).

Ctrl-C: the first starts no new file and waits for the answers to the files in progress (so
the summary says what the peer did with them); a second aborts their associations (A-ABORT):
a file cut short is not kept by the peer, but one whose last byte went out may have been
stored, so each such file is reported as unknown, by name.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from router.cli import send_client, send_files, send_summary
from router.cli.peer_commands import tls_context
from router.cli.send_association import Peer
from router.cli.send_client import Control, Outcome, SendResult
from router.cli.send_files import Scan
from router.cli.send_summary import Summary
from router.core.errors import RouterError
from router.dicom.net import configure_pynetdicom

USAGE_ERROR = 2
_SHOWN_SKIPPED = 5


def _error(message: object) -> None:
    print(f"dicom-router send: {message}", file=sys.stderr)


def _peer(args: argparse.Namespace) -> Peer:
    host, port = args.to
    return Peer(host, port, called_ae=args.called_ae, calling_ae=args.ae,
                max_pdu=args.max_pdu, tls=tls_context(args))


def _warn_skipped(found: Scan) -> None:
    if not found.skipped:
        return
    count = len(found.skipped)
    _error(f"skipped {count} file{'s' if count != 1 else ''} that "
           f"{'are' if count != 1 else 'is'} not DICOM Part 10:")
    for skipped in found.skipped[:_SHOWN_SKIPPED]:
        print(f"  {skipped.path}: {skipped.reason}", file=sys.stderr)
    if count > _SHOWN_SKIPPED:
        print(f"  ... and {count - _SHOWN_SKIPPED} more", file=sys.stderr)


class _Meter:
    """Counts what the sending threads report and shows it on a rich progress bar."""

    def __init__(self, progress: Any, found: Scan) -> None:
        self.progress = progress
        self.total_bytes = sum(instance.size for instance in found.instances)
        self.task = progress.add_task("send", total=len(found.instances), size="", rate="")
        self.count = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, outcome: Outcome) -> None:
        from rich.filesize import decimal

        with self._lock:
            self.count += 1
            self.bytes += outcome.instance.size
            seconds = max(time.monotonic() - self.started, 1e-6)
            self.progress.update(
                self.task, advance=1,
                size=f"{decimal(self.bytes)}/{decimal(self.total_bytes)}",
                rate=f"{self.count / seconds:.0f}/s, {decimal(int(self.bytes / seconds))}/s")


@contextlib.contextmanager
def _progress(found: Scan, enabled: bool) -> Iterator[Callable[[Outcome], None] | None]:
    """A rich progress bar on stderr (instances, bytes, rates), or nothing when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("sending"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[size]}"), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield _Meter(progress, found).advance


def _rate(count: int, size: int, seconds: float) -> str:
    from_size = size / seconds / 1e6 if seconds > 0 else 0.0
    per_second = count / seconds if seconds > 0 else 0.0
    return f"{per_second:.1f} instances/s, {from_size:.2f} MB/s"


def format_summary(summary: Summary, peer: Peer, associations: int) -> list[str]:
    lines = [
        f"sent:       {summary.requested} of {summary.files} instances "
        f"({summary.bytes_sent / 1e6:.2f} MB) to {peer.called_ae}@{peer} "
        f"over {associations} association{'s' if associations != 1 else ''}",
        f"succeeded:  {summary.succeeded} (0x0000)",
        f"warnings:   {sum(summary.warnings.values())}"
        + "".join(f"\n  {label}  {count}" for label, count in summary.warnings.items()),
        f"failed:     {sum(summary.failed.values())}",
    ]
    for label, count in summary.failed.items():
        comment = summary.comments.get(label)
        lines.append(f"  {label}  {count}" + (f"  ({comment})" if comment else ""))
    if summary.unknown:
        lines.append(f"unknown:    {sum(summary.unknown.values())} (sent without an answer: "
                     "the peer may or may not have kept them)")
        lines += [f"  {label}  {count}" for label, count in summary.unknown.items()]
        lines += [f"  {path}" for path in summary.unknown_files[:_SHOWN_SKIPPED]]
        if len(summary.unknown_files) > _SHOWN_SKIPPED:
            lines.append(f"  ... and {len(summary.unknown_files) - _SHOWN_SKIPPED} more")
    if summary.not_sent:
        lines.append(f"not sent:   {summary.not_sent}")
    lines += [
        f"skipped:    {summary.skipped} not DICOM",
        f"elapsed:    {summary.elapsed:.2f} s, "
        f"{_rate(summary.requested, summary.bytes_sent, summary.elapsed)}",
    ]
    return lines


def _report(found: Scan, result: SendResult, peer: Peer, associations: int,
            elapsed: float) -> int:
    for message in result.association_errors + result.errors:
        _error(message)
    if result.interrupted:
        _error("interrupted: the files not yet tried were not sent")
    summary = send_summary.summarize(found, result, elapsed)
    print("\n".join(format_summary(summary, peer, associations)), flush=True)
    return send_summary.exit_code(summary, result)


def run(args: argparse.Namespace) -> int:
    configure_pynetdicom(chunked_send=True)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its failures are reported here
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        _error(f"no such file or folder: {', '.join(missing)}")
        return USAGE_ERROR
    try:
        peer = _peer(args)
    except RouterError as exc:
        _error(exc)
        return USAGE_ERROR
    try:
        found = send_files.scan(args.paths)
    except KeyboardInterrupt:
        _error("interrupted while reading headers: nothing was sent")
        return 1
    _warn_skipped(found)
    if not found.instances:
        _error(f"no DICOM files to send in {', '.join(str(p) for p in args.paths)}")
        return USAGE_ERROR
    started = time.monotonic()
    control = Control()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: _interrupt(control))
    try:
        with _progress(found, not args.quiet and sys.stderr.isatty()) as on_outcome:
            result = send_client.send_all(found.instances, peer, args.associations,
                                          on_outcome, control)
    finally:
        signal.signal(signal.SIGINT, previous)
    return _report(found, result, peer, args.associations, time.monotonic() - started)


def _interrupt(control: Control) -> None:
    """SIGINT while sending: never an exception (it would cut a thread's answer short)."""
    if control.interrupt() == 1:
        _error("interrupted: sending no new file; waiting for the answers to the files in "
               "progress (Ctrl-C again to abort them: their outcome is then unknown)")
    else:
        _error("aborting the associations in progress")
