"""The end of the audit trail's JSON lines file for the console's Audit page, read backwards
in blocks: the latest operator actions, logins and refusals however many transfers came
after them (acceptors and workers write one line per association and per transfer, in
their own processes), and never more than SCAN_MAX bytes per view."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOTABLE_MAX = 200  # operator actions, console logins, refused associations, starts and stops
RECENT_MAX = 50  # the latest events of any kind
SCAN_MAX = 32 * 1024**2  # bytes read from the end at most, per view
BLOCK = 256 * 1024
# Routine events, one per transfer or association: told from the line's bytes, unparsed
# (router/audit/encoding.py writes compact JSON), so that skipping them costs little.
_TRANSFER = b'"EventID":{"csd-code":"110104"'


@dataclass(frozen=True)
class AuditTail:
    notable: list[dict[str, Any]]  # newest first
    recent: list[dict[str, Any]]  # newest first, every kind
    whole: bool  # the whole file was read: no older notable event was left out for the bound


def read_tail(path: Path, scan_max: int = SCAN_MAX) -> AuditTail:
    notable: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return AuditTail(notable, recent, True)
    try:
        size = os.fstat(fd).st_size
        for line in _backwards(fd, size, scan_max):
            transfer = _TRANSFER in line
            if transfer and len(recent) >= RECENT_MAX:
                continue
            event = _event(line)
            if event is None:
                continue
            if len(recent) < RECENT_MAX:
                recent.append(event)
            if not transfer and not _accepted(event):
                notable.append(event)
                if len(notable) >= NOTABLE_MAX:
                    return AuditTail(notable, recent, True)
    finally:
        os.close(fd)
    return AuditTail(notable, recent, size <= scan_max)


def _event(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)["AuditMessage"]
    except (ValueError, KeyError, TypeError):
        return None
    return event if isinstance(event, dict) else None


def _accepted(event: dict[str, Any]) -> bool:
    """An association accepted (User Authentication, outcome 0): routine traffic."""
    ident = event.get("EventIdentification", {})
    return ident.get("EventID", {}).get("csd-code") == "110114" and \
        str(ident.get("EventOutcomeIndicator")) == "0"


def _backwards(fd: int, end: int, scan_max: int) -> Iterator[bytes]:
    """The file's complete lines, last first, from at most `scan_max` bytes before `end`."""
    start = max(0, end - scan_max)
    rest = b""  # the end of a line whose beginning is in the block before
    while end > start:
        size = min(BLOCK, end - start)
        end -= size
        lines = (os.pread(fd, size, end) + rest).split(b"\n")
        rest = lines[0]
        for line in reversed(lines[1:]):
            if line.strip():
                yield line
    if start == 0 and rest.strip():
        yield rest
