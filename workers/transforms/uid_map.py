"""The de-identification UID map: keyed replacement UIDs and pseudonyms, recorded in sqlite."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from router.core.deid_key import SECRET_BYTES, read_key_file
from router.core.errors import RouterError

OPEN_ATTEMPTS = 40  # ~10 s in all, as workers.ledger


class DeidentifyError(RouterError):
    """The UID map's key or database cannot be used."""


class UidMap:
    """Consistent replacement UIDs and patient pseudonyms, shared by every worker process.

    new = root "." decimal(HMAC-SHA256(key, original)): the same original gives the same new
    UID in every process and after every restart, with nothing to coordinate. The key is 32
    random bytes in `secret_path`, created once (mode 0600): whoever has it can recompute the
    map, so it lives beside the spool and never in the config. Each pair is also recorded in
    the sqlite database `db_path` (WAL, shared by all workers) so that an operator can turn a
    new UID or pseudonym back into the original: lookup().
    """

    def __init__(self, secret_path: Path, db_path: Path, *, shared: bool = False) -> None:
        """`shared`: the key file is spool.deidentify_key_file, made by the operator for every
        cell: it is read (and checked), never created."""
        self._key = _shared_key(secret_path) if shared else load_or_create_secret(secret_path)
        self._db = _open_db(db_path)
        self._lock = threading.Lock()
        self._stored: set[str] = set()

    def new_uid(self, original: str, root: str = "2.25") -> str:
        digest = self._mac(b"uid", original)
        if root == "2.25":
            # A UUID's integer, as 2.25 requires: RFC 9562 version 8 (custom), variant 10.
            number = int.from_bytes(digest[:16], "big") & ~(0xF << 76) & ~(0x3 << 62)
            new = f"2.25.{number | 0x8 << 76 | 0x2 << 62}"
        else:
            new = f"{root}.{str(int.from_bytes(digest, 'big'))[: 63 - len(root)]}"
        self._store(new, original, "uid")
        return new

    def pseudonym(self, original: str) -> str:
        """The patient's pseudonymous ID (and default name): "ANON-" and 16 letters/digits."""
        new = "ANON-" + base64.b32encode(self._mac(b"patient", original)[:10]).decode()
        self._store(new, original, "patient")
        return new

    def lookup(self, new: str) -> str | None:
        """The original UID (or patient ID) that `new` replaced, if this map made it."""
        with self._lock:
            row = self._db.execute("SELECT original FROM mapping WHERE new = ?", (new,))
            found = row.fetchone()
        return None if found is None else str(found[0])

    def replacements(self, original: str) -> list[str]:
        """The other way: every new UID (one per root) or pseudonym made from `original`."""
        with self._lock:
            rows = self._db.execute("SELECT new FROM mapping WHERE original = ?", (original,))
            return sorted(str(r[0]) for r in rows.fetchall())

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> UidMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mac(self, kind: bytes, original: str) -> bytes:
        return hmac.new(self._key, kind + b"\0" + original.encode(), hashlib.sha256).digest()

    def _store(self, new: str, original: str, kind: str) -> None:
        if new in self._stored:
            return
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO mapping (new, original, kind, created)"
                             " VALUES (?, ?, ?, ?)", (new, original, kind, time.time()))
            if len(self._stored) > 100_000:
                self._stored.clear()
            self._stored.add(new)


def load_or_create_secret(path: Path) -> bytes:
    """Read the key; if there is none, create it. Of processes starting together, one wins.

    The key is written to a temporary file made with O_EXCL and 0600, fsync'd, then hard
    linked to `path`: the link fails if the name exists, so the key appears whole or not at
    all, and a loser reads the winner's key.
    """
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(SECRET_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(temporary, path)
                _fsync_dir(path.parent)
            except FileExistsError:
                pass
        finally:
            temporary.unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) != SECRET_BYTES:
        raise DeidentifyError(f"{path}: {len(key)} bytes, not a {SECRET_BYTES}-byte key")
    return key


def _shared_key(path: Path) -> bytes:
    try:
        return read_key_file(path)
    except RouterError as exc:  # checked at start: a Secret changed or unmounted since
        raise DeidentifyError(f"spool.deidentify_key_file {exc}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private(path: Path) -> None:
    """The map turns every new UID and pseudonym back into the original: the router's user's
    alone (0600, as the key). Created so before sqlite opens it (the process umask made it
    0644); SQLite gives its -wal and -shm files the database's mode. An older map is fixed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


def _open_db(path: Path) -> sqlite3.Connection:
    """Open the map, switching a new one to WAL; retried while another opener holds it
    (a journal-mode change or schema write meets a lock at once, without the busy timeout)."""
    _private(path)
    for attempt in range(OPEN_ATTEMPTS):
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # the map can be recomputed from the key
            db.execute("CREATE TABLE IF NOT EXISTS mapping (new TEXT PRIMARY KEY,"
                       " original TEXT NOT NULL, kind TEXT NOT NULL, created REAL NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS mapping_original ON mapping (original)")
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" not in str(exc) or attempt == OPEN_ATTEMPTS - 1:
                raise DeidentifyError(f"{path}: {exc}") from exc
            time.sleep(0.05 + 0.01 * attempt)
    raise AssertionError("unreachable")
