"""The duplicate ledger: which jobs, and which bytes, each destination already has.

At-least-once delivery means a delivery can be repeated by the router itself: a worker dies
after the destination stored the instance but before the broker heard so, and the lease goes
to another worker (or the router restarts and recovers the job). The ledger records every
success by (destination, job id) and is checked before every send, so such a redelivery of
the same job is suppressed. A new reception is a new job: a modality or PACS that sends the
same study again means it (a PACS lost it, a corrected instance), so it is delivered again.

Per destination, `on_duplicate: skip` also suppresses a new job whose bytes (SOP Instance
UID and digest) the destination already got within `duplicate_window`: for sites where a
sender repeats itself and the destination must not see it twice. Entries expire after
`duplicate_window` seconds.

One sqlite database in the spool, shared by all workers (WAL mode lets them read while one
writes); one connection per delivery thread.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

PRUNE_EVERY_SECONDS = 60.0
# (destination, SOP Instance UID) whose last delivery this process could not record (disk
# full, a locked database): what the ledger holds of them is older than what they got, so
# `on_duplicate: skip` must not trust it (A, then B unrecorded, then A again was skipped and
# the PACS kept B). Cleared by the next recorded delivery of the instance there. Kept in
# memory by the worker process whose write failed: another worker, or this one restarted,
# does not know (README "Duplicates and re-sends").
_UNRECORDED: set[tuple[str, str]] = set()
_UNRECORDED_LOCK = threading.Lock()


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

    def has_job(self, destination: str, job_id: str) -> bool:
        """This very job was delivered there: a redelivery the router would cause."""
        row = self.db.execute(
            "SELECT delivered_at FROM deliveries WHERE destination = ? AND job_id = ?",
            (destination, job_id),
        ).fetchone()
        return row is not None and time.time() - float(row[0]) <= self.window

    def has(self, destination: str, sop_instance_uid: str, digest: str) -> bool:
        """These bytes are what it got last of this instance, within the window, from any job
        (on_duplicate: skip). The last, not any earlier one: v1, v2, then v1 again must send
        the third, or the destination keeps v2 while the sender's latest is v1. Last by
        rowid, which sqlite gives each insert above every row left (INSERT OR REPLACE
        inserts anew): by delivered_at, a system clock stepped back between v1 and v2 made
        v1's row the newer."""
        with _UNRECORDED_LOCK:
            if (destination, sop_instance_uid) in _UNRECORDED:
                return False  # in doubt, send: a duplicate beats a stale version
        row = self.db.execute(
            "SELECT digest, delivered_at FROM deliveries"
            " WHERE destination = ? AND sop_instance_uid = ?"
            " ORDER BY rowid DESC LIMIT 1",
            (destination, sop_instance_uid),
        ).fetchone()
        return (row is not None and row[0] == digest
                and time.time() - float(row[1]) <= self.window)

    def record(self, destination: str, sop_instance_uid: str, digest: str, job_id: str) -> None:
        """Remember a success; `digest` is empty when nobody will compare bytes. A failure
        (sqlite3.Error) is raised after marking the instance unrecorded for `has`."""
        key = (destination, sop_instance_uid)
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?)",
                (destination, job_id, sop_instance_uid, digest, time.time()),
            )
        except sqlite3.Error:
            with _UNRECORDED_LOCK:
                _UNRECORDED.add(key)
            raise
        with _UNRECORDED_LOCK:
            _UNRECORDED.discard(key)

    def prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY_SECONDS:
            return
        self._pruned = now
        cutoff = time.time() - self.window
        self.db.execute("DELETE FROM deliveries WHERE delivered_at < ?", (cutoff,))

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
            # Keyed by job: the table of earlier versions keyed by bytes (`delivered`) is
            # no proof of a job and is left unused.
            db.execute(
                "CREATE TABLE IF NOT EXISTS deliveries ("
                " destination TEXT NOT NULL, job_id TEXT NOT NULL,"
                " sop_instance_uid TEXT NOT NULL, digest TEXT NOT NULL,"
                " delivered_at REAL NOT NULL, PRIMARY KEY (destination, job_id))"
            )
            db.execute("CREATE INDEX IF NOT EXISTS deliveries_by_bytes"
                       " ON deliveries (destination, sop_instance_uid, digest)")
            # For the prune: without it every delivery thread read the whole table once a
            # minute (a day at 100 instances/s: 8.6 million rows, ~2 GB, about 1 s each).
            # Built once on an older ledger: ~1 s per 2 million rows.
            db.execute("CREATE INDEX IF NOT EXISTS deliveries_by_age ON deliveries (delivered_at)")
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" not in str(exc) or attempt == OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.05 + 0.01 * attempt)
    raise AssertionError("unreachable")
