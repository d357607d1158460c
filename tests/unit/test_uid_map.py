"""The UID map: valid, keyed, consistent UIDs; one key and one map shared by every worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.transforms.uid_map import UidMap, load_or_create_secret

from .deid_samples import STUDY, UID_RE


@pytest.fixture
def uids(tmp_path: Path) -> Iterator[UidMap]:
    with UidMap(tmp_path / "deid.key", tmp_path / "deid-map.sqlite3") as uid_map:
        yield uid_map


def test_another_key_gives_other_uids(tmp_path: Path) -> None:
    with UidMap(tmp_path / "a.key", tmp_path / "a.db") as a, \
            UidMap(tmp_path / "b.key", tmp_path / "b.db") as b:
        assert a.new_uid(STUDY) != b.new_uid(STUDY)


@pytest.mark.parametrize("root", ["2.25", "1.2.826.0.1.3680043.10.543",
                                  "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.1789"])
def test_new_uids_are_valid(root: str, uids: UidMap) -> None:
    assert len(root) <= 43
    for original in ("1.2.3", "9" * 64, "0.0", "not a uid", ""):
        new = uids.new_uid(original, root)
        assert UID_RE.fullmatch(new) and len(new) <= 64 and new.startswith(root + ".")
        assert uids.new_uid(original, root) == new
    if root == "2.25":
        number = int(uids.new_uid(STUDY).removeprefix("2.25."))
        assert number < 2**128 and (number >> 76) & 0xF == 8 and (number >> 62) & 0x3 == 2



def test_workers_share_the_map_and_the_key(tmp_path: Path) -> None:
    """Several UidMaps (each its own sqlite connection, as in separate worker processes)
    created and written at once: one key, no "database is locked", every pair stored."""
    key, db = tmp_path / "deid.key", tmp_path / "map.sqlite3"
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(n: int) -> None:
        try:
            start.wait()
            with UidMap(key, db) as uid_map:
                results[n] = [uid_map.new_uid(f"1.2.3.{i}") for i in range(150)]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert all(results[n] == results[0] for n in results) and len(results) == 6
    with UidMap(key, db) as uid_map:
        assert uid_map.lookup(results[0][149]) == "1.2.3.149"


def test_the_key_is_created_once_by_racing_processes(tmp_path: Path) -> None:
    path = tmp_path / "deid.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_secret(path)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(keys) == 8 and len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["deid.key"]


def test_the_map_and_its_wal_files_are_the_routers_alone(tmp_path: Path) -> None:
    """The map turns pseudonyms and new UIDs back into originals: it was created with the
    process umask (0644: any local account could re-identify) while the key was 0600. An
    older map is made 0600 when opened; a new spool is 0700."""
    import os
    import stat

    from router.core.spool import Spool

    old = os.umask(0o022)  # the usual service umask
    try:
        spool = Spool(tmp_path / "new" / "spool").create()
        db = spool.root / "deid-uids.sqlite"
        with UidMap(spool.root / "deid.key", db) as uid_map:
            uid_map.pseudonym("MRN123")
            uid_map.new_uid(STUDY)
            made = [p for p in spool.root.iterdir() if p.name.startswith(db.name)]
            assert {p.name for p in made} >= {db.name, f"{db.name}-wal", f"{db.name}-shm"}
            assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in made} == dict.fromkeys(
                (p.name for p in made), 0o600)
        assert stat.S_IMODE(spool.root.stat().st_mode) == 0o700
        older = tmp_path / "older.sqlite"
        older.touch(mode=0o644)
        older.chmod(0o644)
        with UidMap(tmp_path / "k", older):
            assert stat.S_IMODE(older.stat().st_mode) == 0o600
        existing = tmp_path / "mounted"
        existing.mkdir(mode=0o755)
        Spool(existing).create()  # a mounted volume: its mode is the operator's
        assert stat.S_IMODE(existing.stat().st_mode) == 0o755
    finally:
        os.umask(old)


# What README "De-identification" tells an operator to run to bound the map.
PURGE = ("DELETE FROM mapping WHERE created < CAST(strftime('%s', 'now', '-730 days') AS REAL)")


def test_purging_old_rows_of_the_map_changes_no_new_uid(tmp_path: Path) -> None:
    """Soak: the map gains a row per de-identified instance and is never pruned. New UIDs
    and pseudonyms come from the key alone, the rows only serve reverse lookup: the purge
    README documents forgets old pairs, and a later instance of an old study still gets the
    same new UIDs (and records its pairs again)."""
    import sqlite3
    import time

    key, db = tmp_path / "deid.key", tmp_path / "deid-uids.sqlite"
    with UidMap(key, db) as uids:
        before = (uids.new_uid(STUDY), uids.new_uid(STUDY, "1.2.3"), uids.pseudonym("P1"))
    connection = sqlite3.connect(db)
    with connection:  # pretend they were made three years ago
        connection.execute("UPDATE mapping SET created = ?", (time.time() - 3 * 365 * 86400,))
    with connection:
        connection.execute(PURGE)
    connection.close()
    with UidMap(key, db) as uids:
        assert uids.lookup(before[0]) is None  # forgotten: only the reverse lookup is lost
        after = (uids.new_uid(STUDY), uids.new_uid(STUDY, "1.2.3"), uids.pseudonym("P1"))
        assert after == before
        assert uids.lookup(before[0]) == STUDY and uids.lookup(before[2]) == "P1"
