"""What each router process is doing right now, for `dicom-router status` and GET /status.

Metrics say how much; this says who and how far: the associations open now with the bytes of
the transfer in progress, and each destination's queue. The acceptor and the broker each
write a small JSON snapshot into the run's status folder about once a second (atomically, by
rename); the supervisor's HTTP endpoint merges them. Nothing here carries a UID or a patient
value: AE titles, addresses, counts and sizes only.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from router.core import metrics

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 1.0
# A snapshot older than this comes from a process that stopped writing (dead or hung).
STALE_SECONDS = 10.0


@dataclass
class AssociationProgress:
    """One inbound association, updated by the connection's threads as PDUs arrive."""

    id: int
    calling_ae: str
    called_ae: str
    peer: str
    tls: bool
    started_at: float = field(default_factory=time.time)
    instances: int = 0  # complete DIMSE requests with a dataset (C-STOREs and others)
    bytes_received: int = 0  # every dataset byte of this association so far
    current_bytes: int = 0  # of the dataset arriving now: progress of a long transfer
    stored: int = 0  # C-STOREs answered Success (set by the store handler before it answers)
    last_activity: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        """Unique over the router's processes and restarts: for log records."""
        return f"{os.getpid()}-{self.id}"

    def add(self, dataset_bytes: int) -> None:
        self.bytes_received += dataset_bytes
        self.current_bytes += dataset_bytes
        self.last_activity = time.time()
        metrics.RECEIVED_BYTES.inc(dataset_bytes)
        metrics.RECEIVING_BYTES.inc(dataset_bytes)

    def message_done(self) -> None:
        """The message arrived whole (or was dropped): its bytes are no longer in flight."""
        if self.current_bytes:
            metrics.RECEIVING_BYTES.dec(self.current_bytes)
            self.instances += 1
            self.current_bytes = 0


class LiveAssociations:
    """The acceptor's open associations; handlers on any thread register and remove them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, AssociationProgress] = {}
        self._ids = itertools.count(1)
        self.accepted = 0  # associations opened since this process started
        self.stored = 0  # C-STOREs answered Success on associations that have closed

    def opened(self, calling_ae: str, called_ae: str, peer: str, tls: bool
               ) -> AssociationProgress:
        progress = AssociationProgress(next(self._ids), calling_ae, called_ae, peer, tls)
        with self._lock:
            self._open[progress.id] = progress
            self.accepted += 1
        return progress

    def closed(self, progress: AssociationProgress) -> None:
        progress.message_done()  # a transfer cut short is in flight no more
        with self._lock:
            if self._open.pop(progress.id, None) is not None:
                self.stored += progress.stored

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(p) for p in sorted(self._open.values(), key=lambda p: p.id)]

    def status(self) -> dict[str, Any]:
        """An acceptor's live snapshot: its open associations and its totals so far."""
        associations = self.snapshot()
        with self._lock:
            stored = self.stored + sum(a["stored"] for a in associations)
            return {"associations": associations, "accepted": self.accepted, "stored": stored}


def write_snapshot(folder: Path, name: str, body: dict[str, Any]) -> None:
    """Atomically replace `<folder>/<name>.json`: a reader never sees half a file."""
    body = {"pid": os.getpid(), "updated": time.time(), **body}
    target = folder / f"{name}.json"
    temp = folder / f".{name}.json.tmp"
    temp.write_text(json.dumps(body, separators=(",", ":")))
    os.replace(temp, target)


def is_stale(updated: float, now: float) -> bool:
    """Whether a report written at `updated` (time.time()) is too old to show as current."""
    return now - updated > STALE_SECONDS


def read_snapshots(folder: Path) -> dict[str, Any]:
    """Every process's latest snapshot by name; a stale one is marked so, not hidden."""
    out: dict[str, Any] = {}
    now = time.time()
    for path in sorted(folder.glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: the next read has it
        body["stale"] = is_stale(float(body.get("updated", 0)), now)
        out[path.stem] = body
    return out


def publish_forever(folder: Path, name: str, build: Any, stop: threading.Event) -> None:
    """Write `build()` at once, then every PUBLISH_SECONDS until `stop`; a failed write is
    logged once. At once: the supervisor reads the first snapshot as "its SIGHUP handler is
    in place" (readiness.heeds_sighup), and sent a SIGHUP of the second before it again."""
    failing = False
    while True:
        try:
            write_snapshot(folder, name, build())
            failing = False
        except OSError as exc:
            if not failing:
                log.warning("cannot write the live status to %s: %s", folder, exc)
            failing = True
        if stop.wait(PUBLISH_SECONDS):
            return
