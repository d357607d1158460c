"""Pending storage commitments: the Transaction UID of each N-ACTION relayed, with the AE
title of the requester, so that the upstream's N-EVENT-REPORT (usually on a new association
to the router, which may reach any acceptor process) is delivered to the right requester.
(Relayed C-MOVEs in progress: router/relay/move_registry.py.)
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

COMMITMENT_MEMORY_SECONDS = 24 * 3600.0  # a storage commitment result may come hours later


@dataclass(frozen=True)
class Commitment:
    requester_ae: str
    at: float  # wall-clock time it was relayed


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
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, transaction_uid: str) -> Path | None:
        if self.folder is None or not re.fullmatch(r"[0-9.]{1,64}", transaction_uid):
            return None  # a hostile "UID" never becomes a file name
        return self.folder / f"{transaction_uid}.json"

    def remember(self, transaction_uid: str, requester_ae: str) -> None:
        now = time.time()
        self._forget_expired(now)
        path = self._path(transaction_uid)
        if path is None:
            with self._lock:
                self._pending[transaction_uid] = Commitment(requester_ae, now)
            return
        temp = path.with_name(f".{os.getpid()}-{path.name}")
        temp.write_text(json.dumps({"requester_ae": requester_ae, "at": now}))
        os.replace(temp, path)

    def _forget_expired(self, now: float) -> None:
        with self._lock:
            for uid in [u for u, c in self._pending.items()
                        if now - c.at >= COMMITMENT_MEMORY_SECONDS]:
                del self._pending[uid]
        if self.folder is not None:
            for path in self.folder.glob("*.json"):
                try:
                    if now - path.stat().st_mtime >= COMMITMENT_MEMORY_SECONDS:
                        path.unlink()
                except FileNotFoundError:
                    pass  # taken meanwhile

    def take(self, transaction_uid: str) -> Commitment | None:
        """The pending commitment, once: None when unknown or taken already."""
        path = self._path(transaction_uid)
        if path is None:
            with self._lock:
                return self._pending.pop(transaction_uid, None)
        try:
            body = json.loads(path.read_text())
            commitment = Commitment(str(body["requester_ae"]), float(body["at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            commitment = None  # unreadable: it can never be matched
        try:
            path.unlink()
        except FileNotFoundError:
            return None  # another acceptor took it first
        return commitment

    def restore(self, transaction_uid: str, commitment: Commitment) -> None:
        """A result that could not be delivered: wait for the upstream's retry."""
        self.remember(transaction_uid, commitment.requester_ae)
