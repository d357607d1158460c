"""A broker start with jobs on the spool whose destination was removed from the config: they
become `unknown_destination` dead letters at once, and the broker's log says so, with the
same counts in its 'recovered' and 'ready' lines."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.broker.dead_letter_writing import DEAD_LETTER_BATCH
from router.broker.main import Broker
from router.core import spool as spool_module
from router.core.config import parse_config
from router.core.messages import JobHeader
from router.core.runtime import Runtime
from router.core.spool import Spool

from .helpers import make_header

CONFIG = parse_config({
    "destinations": {"pacs": {"type": "folder", "path": "/tmp/h-fix2-never-written"}},
    "rules": [{"name": "all", "forward": ["pacs"]}]})


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with tempfile.TemporaryDirectory(prefix="rt-") as folder:  # short: IPC socket paths
        yield Runtime(Path(folder))


def _commit(spool: Spool, count: int, destination: str) -> list[str]:
    job_ids = [f"{n:016x}aaaaaaaa" for n in range(count)]
    for n, job_id in enumerate(job_ids):
        received = spool.incoming / f"{n}.tmp"
        received.write_bytes(b"DICM")
        spool.commit(make_header(job_id, (destination,)), received)
    return job_ids


def _write_all(broker: Broker) -> int:
    """Run the loop's housekeeping until the start's dead letters are written; how often."""
    rounds = 0
    while broker.writing_dead_letters:
        broker._housekeeping(time.monotonic())
        rounds += 1
    return rounds


def test_a_start_answers_before_its_dead_letters_are_written_and_a_kill_loses_none(
        tmp_path: Path, runtime: Runtime) -> None:
    """300 jobs for a removed destination: the broker is ready before writing their dead
    letters (which took minutes for 50,000, all senders refused meanwhile), writes them a
    batch per turn of its loop, and a kill -9 midway leaves the rest on the spool for the
    next start: each job ends as exactly one dead letter."""
    spool = Spool(tmp_path / "spool").create()
    job_ids = _commit(spool, 300, "removed")
    broker = Broker(CONFIG, runtime, spool)
    try:
        recovery = broker.recover()
        assert dict(recovery.dead_letters) == {"unknown_destination": 300}
        assert list(spool.dead_letters.glob("*.json")) == []  # none yet: ready at once
        assert broker.writing_dead_letters
        broker._housekeeping(time.monotonic())
        broker._housekeeping(time.monotonic())
        written = len(list(spool.dead_letters.glob("*.json")))
        assert 0 < written < 300
        broker.reaper.close()
    finally:
        broker.frontend.close()
        broker.backend.close()
        broker.context.term()  # a kill -9: what was in memory is gone
    assert all(spool.instance_path(j).exists() for j in job_ids[written:])  # still on the spool

    again = Broker(CONFIG, runtime, spool)
    try:
        again.recover()
        assert _write_all(again) > 1
        again.reaper.close()
    finally:
        again.close()
    records = sorted(p.name for p in spool.dead_letters.glob("*.json"))
    assert records == sorted(f"{j}.removed.json" for j in job_ids)
    assert not any(spool.instance_path(j).exists() for j in job_ids)


def test_jobs_for_a_removed_destination_are_counted_as_dead_letters(
        tmp_path: Path, runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool").create()
    destinations = ["pacs"] + ["removed"] * 6
    for n, destination in enumerate(destinations):
        received = spool.incoming / f"{n}.tmp"
        received.write_bytes(b"DICM")
        spool.commit(make_header(f"{n:016x}aaaaaaaa", (destination,)), received)
    broker = Broker(CONFIG, runtime, spool)
    try:
        with caplog.at_level(logging.INFO, logger="router.broker"):
            recovery = broker.recover()
            _write_all(broker)
    finally:
        broker.close()
    assert (recovery.jobs, recovery.queued, dict(recovery.dead_letters)) == (
        7, 1, {"unknown_destination": 6})
    assert str(recovery) == ("7 jobs recovered from the spool, 1 queued; deliveries made "
                             "dead letters at once: 6 unknown_destination")
    assert str(recovery) in caplog.messages, caplog.messages
    assert len(broker.dispatcher.jobs) == recovery.queued
    assert len(list(spool.dead_letters.glob("*.json"))) == 6


def test_a_start_fsyncs_the_dead_letters_folder_once_per_batch_before_removing_jobs(
        tmp_path: Path, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 dead letters at start: the folder was fsync'd once per record. Now once per
    batch, and still before any of the batch's jobs leaves the spool (the crash argument in
    Broker._write_deferred_dead_letters)."""
    spool = Spool(tmp_path / "spool").create()
    job_ids = _commit(spool, 100, "removed")
    folder = spool.dead_letters
    synced: set[str] = set()  # records on the spool when the folder was last fsync'd
    syncs = []

    def fsync_path(path: Path, *, directory: bool = False) -> None:
        real_fsync_path(path, directory=directory)
        if directory and path == folder:
            syncs.append(path)
            synced.update(p.name for p in folder.glob("*.json"))

    real_fsync_path = spool_module.fsync_path
    monkeypatch.setattr(spool_module, "fsync_path", fsync_path)
    broker = Broker(CONFIG, runtime, spool)
    removed = []

    def remove(job: JobHeader, *, reuse: bool = False) -> None:
        assert f"{job.job_id}.removed.json" in synced, "a job removed before its record"
        removed.append(job.job_id)

    monkeypatch.setattr(broker.reaper, "remove", remove)
    try:
        broker.recover()
        rounds = _write_all(broker)
    finally:
        broker.close()
    assert sorted(removed) == job_ids
    assert len(synced) == 100
    assert len(syncs) == rounds == -(-100 // DEAD_LETTER_BATCH)


def test_a_failed_fsync_of_the_dead_letters_folder_keeps_the_batch_s_jobs(
        tmp_path: Path, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool").create()
    job_ids = _commit(spool, 10, "removed")
    real_fsync_path = spool_module.fsync_path
    failing = [True]

    def fsync_path(path: Path, *, directory: bool = False) -> None:
        if directory and path == spool.dead_letters and failing[0]:
            raise OSError(5, "Input/output error")
        real_fsync_path(path, directory=directory)

    monkeypatch.setattr(spool_module, "fsync_path", fsync_path)
    broker = Broker(CONFIG, runtime, spool)
    try:
        broker.recover()
        broker._housekeeping(time.monotonic())
        assert not broker.writing_dead_letters  # the heartbeat's retries take over
        assert len(broker.unwritten.letters) == 10
        assert all(spool.instance_path(j).exists() for j in job_ids)
        failing[0] = False
        broker._housekeeping(broker.next_heartbeat)
        assert not broker.unwritten.letters
        broker.reaper.close()
    finally:
        broker.close()
    assert len(list(spool.dead_letters.glob("*.json"))) == 10
    assert not any(spool.instance_path(j).exists() for j in job_ids)
