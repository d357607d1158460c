"""Pending storage commitments: the Transaction UID of each N-ACTION relayed, with the AE
title of the requester and the upstreams it was relayed to, so that the upstream's
N-EVENT-REPORT (usually on a new association to the router, which may reach any acceptor
process) is delivered to the right requester, and nobody else's is.
(Relayed C-MOVEs in progress: router/relay/move_registry.py.)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from router.core.config import RouterConfig
from router.core.config.destinations import DicomDestination
from router.core.durable_files import fsync_path, write_atomically

COMMITMENT_MEMORY_SECONDS = 24 * 3600.0  # a storage commitment result may come hours later
# How often a process looks through the folder for expired commitments: a stat per file, and
# on a shared folder (spool.shared_state_dir, NFS) each stat is a round trip to the server.
SWEEP_SECONDS = 60.0
# Commitments whose Transaction UID cannot be a file name, held in memory: at most this many
# (the oldest forgotten first), so that a requester sending such UIDs cannot grow it.
MAX_IN_MEMORY = 1000

# An upstream the N-ACTION was relayed to: its name in destinations and the AE titles its
# result may come from (ae_title, then store_ae_titles).
Upstream = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class Commitment:
    requester_ae: str
    at: float  # wall-clock time it was relayed
    # Empty for one remembered before the router recorded them (an upgrade): any AE may
    # report it, as then, so that a pending commitment is not lost.
    upstreams: tuple[Upstream, ...] = ()

    def reported_by(self, calling_ae: str, config: RouterConfig) -> bool:
        """Whether a result from calling_ae may be this commitment's: it comes from an AE
        title of an upstream its N-ACTION went to, as recorded then or as the config says
        now (a reload adding store_ae_titles lets the upstream's next try through)."""
        if not self.upstreams:
            return True
        titles = upstream_titles(config, [name for name, _ in self.upstreams])
        allowed = {t for _, recorded in (*self.upstreams, *titles) for t in recorded}
        return calling_ae.strip() in allowed

    def upstream_names(self) -> str:
        """The upstreams for the log: `pacs (PACS)`."""
        return ", ".join(f"{name} ({'/'.join(titles)})" for name, titles in self.upstreams)


def upstream_titles(config: RouterConfig, names: Iterable[str]) -> tuple[Upstream, ...]:
    """Each DICOM destination's AE titles a storage commitment result may come from."""
    found = []
    for name in names:
        destination = config.destinations.get(name)
        if isinstance(destination, DicomDestination):
            found.append((name, (destination.ae_title, *destination.store_ae_titles)))
    return tuple(found)


class Commitments:
    """Pending storage commitments by Transaction UID, kept on the spool volume
    (`<spool>/commitments/<uid>.json`): a result arriving after a restart of the acceptor, or
    at another acceptor than the one that relayed the request, finds its requester; the
    acceptor that deletes the file is the one that delivers it. Without a folder, and for a
    Transaction UID that cannot be a file name, they live in this process's memory only."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._pending: dict[str, Commitment] = {}
        self._lock = threading.Lock()
        self._swept_at = float("-inf")  # monotonic
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, transaction_uid: str) -> Path | None:
        if self.folder is None or not re.fullmatch(r"[0-9.]{1,64}", transaction_uid):
            return None  # a hostile "UID" never becomes a file name
        return self.folder / f"{transaction_uid}.json"

    def remember(self, transaction_uid: str, requester_ae: str,
                 upstreams: tuple[Upstream, ...] = ()) -> None:
        now = time.time()
        self._forget_expired(now)
        path = self._path(transaction_uid)
        if path is None:
            with self._lock:
                self._pending[transaction_uid] = Commitment(requester_ae, now, upstreams)
                while len(self._pending) > MAX_IN_MEMORY:  # dicts keep their order
                    del self._pending[next(iter(self._pending))]
            return
        # Durable before the requester hears Success: after a power cut the upstream's
        # result must still find its requester (file and folder fsync'd, about 1 ms per
        # N-ACTION). The temporary name is random, not the pid's: cells sharing the folder
        # may have the same pids.
        write_atomically(path, json.dumps({"requester_ae": requester_ae, "at": now,
                                           "upstreams": dict(upstreams)}).encode())
        fsync_path(path.parent, directory=True)

    def _forget_expired(self, now: float) -> None:
        with self._lock:
            for uid in [u for u, c in self._pending.items()
                        if now - c.at >= COMMITMENT_MEMORY_SECONDS]:
                del self._pending[uid]
            swept, self._swept_at = self._swept_at, time.monotonic()
            if self._swept_at - swept < SWEEP_SECONDS:
                self._swept_at = swept
                return
        if self.folder is not None:
            for path in self.folder.glob("*.json"):
                try:
                    if now - path.stat().st_mtime >= COMMITMENT_MEMORY_SECONDS:
                        path.unlink()
                except FileNotFoundError:
                    pass  # taken meanwhile

    def peek(self, transaction_uid: str) -> Commitment | None:
        """The pending commitment, left pending: None when unknown or unreadable."""
        path = self._path(transaction_uid)
        if path is None:
            with self._lock:
                return self._pending.get(transaction_uid)
        try:
            return _read(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def take(self, transaction_uid: str) -> Commitment | None:
        """The pending commitment, once: None when unknown or taken already."""
        path = self._path(transaction_uid)
        if path is None:
            with self._lock:
                return self._pending.pop(transaction_uid, None)
        try:
            commitment: Commitment | None = _read(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            commitment = None  # unreadable: it can never be matched
        try:
            path.unlink()
        except FileNotFoundError:
            return None  # another acceptor took it first
        return commitment

    def restore(self, transaction_uid: str, commitment: Commitment) -> None:
        """A result that could not be delivered: wait for the upstream's retry."""
        self.remember(transaction_uid, commitment.requester_ae, commitment.upstreams)


def _read(path: Path) -> Commitment:
    body = json.loads(path.read_text())
    upstreams = tuple((str(name), tuple(str(t) for t in titles))
                      for name, titles in body.get("upstreams", {}).items())
    return Commitment(str(body["requester_ae"]), float(body["at"]), upstreams)
