"""workers/ledger.py: the duplicate ledger shared by delivery threads (sqlite in tmp_path)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers import ledger as ledger_module
from workers.ledger import PRUNE_EVERY_SECONDS, DeliveryLedger, file_digest

WINDOW = 3600.0
DIGEST = "a" * 40
OTHER_DIGEST = "b" * 40


class Clocks:
    """Settable stand-ins for time.time (wall) and time.monotonic, as the ledger sees them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 10_000.0
        monkeypatch.setattr(ledger_module.time, "time", lambda: self.wall)
        monkeypatch.setattr(ledger_module.time, "monotonic", lambda: self.mono)


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Clocks:
    return Clocks(monkeypatch)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[DeliveryLedger]:
    db = DeliveryLedger(tmp_path / "ledger.sqlite", WINDOW)
    yield db
    db.close()


def row_count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])


def test_recorded_delivery_is_a_duplicate(ledger: DeliveryLedger) -> None:
    assert not ledger.has("pacs", "1.2.3", DIGEST)
    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    assert ledger.has("pacs", "1.2.3", DIGEST)


def test_other_digest_for_same_instance_is_not_a_duplicate(ledger: DeliveryLedger) -> None:
    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    assert not ledger.has("pacs", "1.2.3", OTHER_DIGEST)


def test_only_the_version_it_got_last_is_a_duplicate(ledger: DeliveryLedger,
                                                     clocks: Clocks) -> None:
    """v1, v2, then v1 again: the third is no duplicate of what the destination holds (v2),
    though it got those bytes before; skipping it left the PACS with v2 while the sender's
    latest, and every other destination's, was v1."""
    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    clocks.wall += 1
    ledger.record("pacs", "1.2.3", OTHER_DIGEST, "job-2")
    assert not ledger.has("pacs", "1.2.3", DIGEST)
    assert ledger.has("pacs", "1.2.3", OTHER_DIGEST)


def test_the_version_it_got_last_is_known_after_the_clock_stepped_back(
        ledger: DeliveryLedger, clocks: Clocks) -> None:
    """The last version was the row with the latest delivered_at: with the system clock
    stepped back two hours between v1 and v2 (an NTP step after a VM resumed), v1's row
    still looked the newer, v1 sent again was skipped and the PACS kept v2."""
    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    clocks.wall -= 7200
    ledger.record("pacs", "1.2.3", OTHER_DIGEST, "job-2")
    assert not ledger.has("pacs", "1.2.3", DIGEST)
    assert ledger.has("pacs", "1.2.3", OTHER_DIGEST)


def test_other_destination_is_not_a_duplicate(ledger: DeliveryLedger) -> None:
    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    assert not ledger.has("archive", "1.2.3", DIGEST)


def test_other_instance_is_not_a_duplicate(ledger: DeliveryLedger) -> None:
    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    assert not ledger.has("pacs", "1.2.4", DIGEST)


def test_entry_expires_after_the_window(ledger: DeliveryLedger, clocks: Clocks) -> None:
    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    clocks.wall += WINDOW - 1
    assert ledger.has("pacs", "1.2.3", DIGEST)
    clocks.wall += 2  # now WINDOW + 1 seconds after the delivery
    assert not ledger.has("pacs", "1.2.3", DIGEST)


def test_recording_again_renews_the_entry(ledger: DeliveryLedger, clocks: Clocks) -> None:
    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    clocks.wall += WINDOW - 10
    ledger.record("pacs", "1.2.3", DIGEST, "job-2")
    clocks.wall += 20  # past the first delivery's window, inside the second's
    assert ledger.has("pacs", "1.2.3", DIGEST)


def test_prune_deletes_only_rows_older_than_the_window(
    tmp_path: Path, ledger: DeliveryLedger, clocks: Clocks
) -> None:
    ledger.record("pacs", "1.2.3", DIGEST, "old")
    clocks.wall += WINDOW + 5
    ledger.record("pacs", "1.2.4", DIGEST, "recent")
    assert row_count(tmp_path / "ledger.sqlite") == 2
    ledger.prune()
    assert row_count(tmp_path / "ledger.sqlite") == 1
    assert ledger.has("pacs", "1.2.4", DIGEST)


def test_prune_runs_at_most_once_per_interval(
    tmp_path: Path, ledger: DeliveryLedger, clocks: Clocks
) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger.prune()  # first call prunes (nothing to delete) and starts the interval

    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    clocks.wall += WINDOW + 5  # the row is now stale
    clocks.mono += PRUNE_EVERY_SECONDS - 1
    ledger.prune()
    assert row_count(path) == 1, "pruned again before PRUNE_EVERY_SECONDS had passed"

    clocks.mono += 2
    ledger.prune()
    assert row_count(path) == 0


def test_the_prune_finds_expired_rows_by_an_index_not_by_reading_the_table(
    tmp_path: Path, ledger: DeliveryLedger
) -> None:
    """Regression: every delivery thread's prune read the whole table once a minute (a day at
    100 instances/s is 8.6 million rows, ~2 GB; a 2 million row table took 0.24 s a scan,
    0.0003 s by the index), also a ledger from before the index, which gets it on opening."""
    def plan(db: sqlite3.Connection) -> str:
        rows = db.execute("EXPLAIN QUERY PLAN DELETE FROM deliveries WHERE delivered_at < ?",
                          (0.0,)).fetchall()
        return " ".join(str(row[-1]) for row in rows)

    assert "USING INDEX deliveries_by_age" in plan(ledger.db), plan(ledger.db)
    older = tmp_path / "older.sqlite"
    db = sqlite3.connect(older)
    db.execute("CREATE TABLE deliveries ( destination TEXT NOT NULL, job_id TEXT NOT NULL,"
               " sop_instance_uid TEXT NOT NULL, digest TEXT NOT NULL,"
               " delivered_at REAL NOT NULL, PRIMARY KEY (destination, job_id))")
    db.execute("INSERT INTO deliveries VALUES ('pacs', 'job-1', '1.2.3', '', 1.0)")
    db.commit()
    db.close()
    reopened = DeliveryLedger(older, WINDOW)
    try:
        assert "USING INDEX deliveries_by_age" in plan(reopened.db), plan(reopened.db)
        assert reopened.has_job("pacs", "job-1") is False  # its row kept, long expired
        assert row_count(older) == 1
    finally:
        reopened.close()


def test_two_ledgers_on_one_file_share_records(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    first = DeliveryLedger(path, WINDOW)
    second = DeliveryLedger(path, WINDOW)
    try:
        first.record("pacs", "1.2.3", DIGEST, "job-1")
        assert second.has("pacs", "1.2.3", DIGEST)
        second.record("archive", "1.2.3", DIGEST, "job-1")
        assert first.has("archive", "1.2.3", DIGEST)
    finally:
        first.close()
        second.close()


def test_ledger_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    first = DeliveryLedger(path, WINDOW)
    first.record("pacs", "1.2.3", DIGEST, "job-1")
    first.close()
    again = DeliveryLedger(path, WINDOW)
    try:
        assert again.has("pacs", "1.2.3", DIGEST)
    finally:
        again.close()


def test_file_digest_is_stable_and_sees_one_byte(tmp_path: Path) -> None:
    data = bytearray(range(256)) * 9000  # > 1 MiB: more than one read chunk
    path = tmp_path / "a.dcm"
    path.write_bytes(bytes(data))
    first = file_digest(path)
    assert first == file_digest(path)
    assert len(first) == 40  # 20-byte blake2b, hex

    data[-1] ^= 0x01  # the change is in the second chunk
    path.write_bytes(bytes(data))
    assert file_digest(path) != first

    data[-1] ^= 0x01
    data[0] ^= 0x80
    path.write_bytes(bytes(data))
    assert file_digest(path) != first


def test_file_digest_of_copies_is_equal(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"DICM" * 100)
    (tmp_path / "b").write_bytes(b"DICM" * 100)
    assert file_digest(tmp_path / "a") == file_digest(tmp_path / "b")



def _open_at_once(path: str, barrier: Any, names: list[str], errors: Any) -> None:
    """One worker process: its delivery threads open the ledger at the same moment."""
    import threading

    def open_and_record(name: str) -> None:
        barrier.wait()
        try:
            opened = DeliveryLedger(Path(path), window=3600)
            opened.record("pacs", name, "digest", name)
            opened.close()
        except Exception as exc:
            errors.put(repr(exc))

    threads = [threading.Thread(target=open_and_record, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def test_workers_opening_a_new_ledger_at_once(tmp_path: Path) -> None:
    """Two worker processes of four delivery threads each open a new ledger together, as at
    every start. sqlite answered the losers' WAL switch with "database is locked" at once
    (it failed about one start in five before the open was retried)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for attempt in range(5):
        path = str(tmp_path / f"ledger-{attempt}.sqlite")
        barrier, errors = context.Barrier(8), context.Queue()
        names = [[f"{attempt}-{w}-{t}" for t in range(4)] for w in range(2)]
        workers = [context.Process(target=_open_at_once, args=(path, barrier, n, errors))
                   for n in names]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert errors.empty(), errors.get()
        check = DeliveryLedger(Path(path), window=3600)
        assert all(check.has("pacs", name, "digest") for group in names for name in group)
        check.close()


def test_a_job_is_known_by_its_id_not_by_its_bytes(ledger: DeliveryLedger) -> None:
    ledger.record("pacs", "1.2.3", "", "job-1")  # on_duplicate: send records no digest
    assert ledger.has_job("pacs", "job-1")
    assert not ledger.has_job("pacs", "job-2")  # a new reception of the same instance
    assert not ledger.has_job("archive", "job-1")


def test_two_receptions_of_the_same_bytes_are_two_entries(ledger: DeliveryLedger) -> None:
    ledger.record("pacs", "1.2.3", DIGEST, "job-1")
    ledger.record("pacs", "1.2.3", DIGEST, "job-2")
    assert ledger.has_job("pacs", "job-1") and ledger.has_job("pacs", "job-2")
    assert ledger.has("pacs", "1.2.3", DIGEST)


def test_a_delivery_the_ledger_could_not_record_makes_skip_send(tmp_path: Path) -> None:
    """A, then B delivered but unrecorded (the spool full), then A again: the ledger's last
    row says A, so skip suppressed the third and the PACS kept B (chaos hunt). Until the
    instance's next recorded delivery, has() says send."""
    ledger = DeliveryLedger(tmp_path / "ledger.sqlite", WINDOW)
    try:
        ledger.record("pacs", "1.2.9", DIGEST, "job-1")
        ledger.db.execute("PRAGMA query_only = ON")  # a write the database refuses
        with pytest.raises(sqlite3.Error):
            ledger.record("pacs", "1.2.9", OTHER_DIGEST, "job-2")
        ledger.db.execute("PRAGMA query_only = OFF")
        assert not ledger.has("pacs", "1.2.9", DIGEST)  # in doubt: send
        assert not ledger.has("pacs", "1.2.9", OTHER_DIGEST)
        ledger.record("pacs", "1.2.9", DIGEST, "job-3")
        assert ledger.has("pacs", "1.2.9", DIGEST)  # recorded again: known
    finally:
        ledger.close()
