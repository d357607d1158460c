"""The duplicate ledger: which bytes each destination already has.

At-least-once delivery means a delivery can be repeated: a worker dies after the destination
stored the instance but before the broker heard so, and the lease goes to another worker. The
ledger records (destination, SOP Instance UID, digest) after every success and is checked
before every send, so such a repeat is suppressed; an instance whose bytes changed (a
different digest) is still delivered. Entries expire after `duplicate_window` seconds.

One sqlite database in the spool, shared by all workers (WAL mode lets them read while one
writes); one connection per delivery thread.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

PRUNE_EVERY_SECONDS = 60.0


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


OPEN_ATTEMPTS = 40  # ~10 s in all


class DeliveryLedger:
    def __init__(self, path: Path, window: float) -> None:
        self.window = window
        self.db = _open(path)
        self._pruned = 0.0

    def has(self, destination: str, sop_instance_uid: str, digest: str) -> bool:
        row = self.db.execute(
            "SELECT delivered_at FROM delivered"
            " WHERE destination = ? AND sop_instance_uid = ? AND digest = ?",
            (destination, sop_instance_uid, digest),
        ).fetchone()
        return row is not None and time.time() - float(row[0]) <= self.window

    def record(self, destination: str, sop_instance_uid: str, digest: str, job_id: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO delivered VALUES (?, ?, ?, ?, ?)",
            (destination, sop_instance_uid, digest, job_id, time.time()),
        )

    def prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY_SECONDS:
            return
        self._pruned = now
        cutoff = time.time() - self.window
        self.db.execute("DELETE FROM delivered WHERE delivered_at < ?", (cutoff,))

    def close(self) -> None:
        self.db.close()


def _open(path: Path) -> sqlite3.Connection:
    """Open the ledger, switching a new one to WAL; retried while another opener holds it.

    Every delivery thread of every worker opens it at once on start. sqlite answers a
    journal-mode change or a schema write that meets another connection's lock with
    "database is locked" at once, without its busy timeout, so the opening is retried.
    """
    for attempt in range(OPEN_ATTEMPTS):
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a power cut may forget the last entries (a duplicate at worst), never
            # corrupt.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS delivered ("
                " destination TEXT NOT NULL, sop_instance_uid TEXT NOT NULL,"
                " digest TEXT NOT NULL, job_id TEXT NOT NULL, delivered_at REAL NOT NULL,"
                " PRIMARY KEY (destination, sop_instance_uid, digest))"
            )
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" not in str(exc) or attempt == OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.05 + 0.01 * attempt)
    raise AssertionError("unreachable")
