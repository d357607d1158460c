"""Instances the router sent on, counted per destination, study and outcome for the trail.

A worker adds each instance a destination took, the broker each one it gave up on (a dead
letter); both flush every TALLY_FLUSH_SECONDS and when they stop, one A.5.3.7 message per
destination, study and outcome (docs/audit.md). Adding is a counter under a lock: no I/O
per instance.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from router.audit.messages import RemoteNode
from router.audit.trail import TALLY_FLUSH_SECONDS, AuditTrail
from router.core.config import RouterConfig


def destination_node(name: str, config: RouterConfig) -> RemoteNode:
    """The destination as the audit trail names it: a DICOM peer by AE title and host, a
    DICOMweb service by the host of its URL, a folder by its name (on this host)."""
    dest = config.destinations.get(name)
    ae_title = getattr(dest, "ae_title", None)
    if ae_title:
        return RemoteNode(name, ae_title, getattr(dest, "host", None))
    url = getattr(dest, "url", None)
    if url:
        return RemoteNode(name, None, urlsplit(url).hostname or url)
    return RemoteNode(name)


@dataclass
class _Study:
    by_class: Counter[str] = field(default_factory=Counter)
    reasons: set[str] = field(default_factory=set)


class ForwardTally:
    """Thread-safe: delivery threads add, the process's loop flushes. A destination is named
    as configured when its instance was counted: a reload that removes it (its queue turns
    into dead letters) or moves it does not rename what was counted before."""

    def __init__(self, config: RouterConfig, interval: float = TALLY_FLUSH_SECONDS) -> None:
        self._config = config
        self._nodes: dict[str, RemoteNode] = {}
        # (destination, study, delivered, de-identified): a destination can get one study
        # both as received and de-identified (rules that differ by sender, say).
        self._counts: dict[tuple[RemoteNode, str, bool, bool], _Study] = {}
        self._patients: dict[str, str] = {}
        self._lock = threading.Lock()
        self._interval = interval
        self._since: float | None = None  # monotonic time of the oldest unflushed add

    def add(self, destination: str, study_uid: str, sop_class_uid: str, ok: bool,
            patient_id: str = "", reason: str = "", *, deidentified: bool = False) -> None:
        """`deidentified`: the destination got it de-identified; the record still names the
        original study and patient (docs/audit.md) and says Anonymized."""
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
            node = self._nodes.get(destination)
            if node is None:
                node = self._nodes[destination] = destination_node(destination, self._config)
            key = (node, study_uid or "unknown", ok, deidentified)
            study = self._counts.setdefault(key, _Study())
            study.by_class[sop_class_uid] += 1
            if reason:
                study.reasons.add(reason)
            if patient_id:
                self._patients.setdefault(study_uid, patient_id)

    def set_config(self, config: RouterConfig) -> None:
        """A reloaded config: instances counted from now on name destinations by it."""
        with self._lock:
            self._config, self._nodes = config, {}

    def due(self, now: float) -> bool:
        """Have counts waited `interval` seconds (monotonic `now`) since their first add?"""
        with self._lock:
            return self._since is not None and now - self._since >= self._interval

    def flush(self, trail: AuditTrail) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            patients, self._patients = self._patients, {}
            self._since = None
        for (node, study_uid, ok, deidentified), study in counts.items():
            description = None if ok else \
                f"not delivered: dead letters ({', '.join(sorted(study.reasons))})"
            trail.instances_forwarded(node, study_uid,
                                      dict(study.by_class), ok,
                                      patient_id=patients.get(study_uid), description=description,
                                      anonymized=deidentified)
