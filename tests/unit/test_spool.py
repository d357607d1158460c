"""router/core/spool.py: durable job files, recovery, orphans and dead letters (tmp_path only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from router.core.messages import JobHeader
from router.core.spool import RecoveredJob, Spool, new_job_id, write_atomically

from .helpers import make_header

# Fixed-width hex ids sort oldest first, like new_job_id()'s.
OLD = "0000000000000001aaaaaaaa"
MID = "0000000000000002bbbbbbbb"
NEW = "0000000000000003cccccccc"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").create()


def receive(spool: Spool, data: bytes = b"DICM-instance-bytes") -> Path:
    """A fully received file in incoming/, as the acceptor leaves it."""
    path = spool.incoming / f"recv-{os.urandom(4).hex()}.part"
    path.write_bytes(data)
    return path


def commit(spool: Spool, header: JobHeader, data: bytes = b"DICM-instance-bytes") -> Path:
    return spool.commit(header, receive(spool, data))


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_create_makes_the_layout(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a" / "spool").create()

    assert spool.root == (tmp_path / "a" / "spool").resolve()
    assert spool.incoming.is_dir() and spool.jobs.is_dir() and spool.dead_letters.is_dir()
    assert spool.create() is spool  # idempotent


def test_commit_moves_the_file_into_jobs_with_a_header(spool: Spool) -> None:
    header = make_header(OLD, ("pacs", "archive"))
    received = receive(spool, b"instance")

    target = spool.commit(header, received)

    assert target == spool.jobs / f"{OLD}.dcm" == spool.instance_path(OLD)
    assert target.read_bytes() == b"instance"
    assert not received.exists()
    assert names(spool.incoming) == set()
    assert names(spool.jobs) == {f"{OLD}.dcm", f"{OLD}.json"}
    stored = json.loads((spool.jobs / f"{OLD}.json").read_text())
    assert stored == header.to_dict()
    assert JobHeader.from_dict(stored) == header


def test_recover_yields_committed_jobs_oldest_first(spool: Spool) -> None:
    headers = {i: make_header(i, ("pacs",)) for i in (NEW, OLD, MID)}
    for header in headers.values():  # committed out of order
        commit(spool, header)

    recovered = list(spool.recover())

    assert [r.header.job_id for r in recovered] == [OLD, MID, NEW]
    assert recovered[0] == RecoveredJob(headers[OLD], frozenset())


def test_recover_reports_delivered_markers(spool: Spool) -> None:
    header = make_header(OLD, ("pacs", "archive", "research"))
    commit(spool, header)
    spool.mark_delivered(OLD, "pacs")
    spool.mark_delivered(OLD, "research")

    (job,) = spool.recover()

    assert job.header == header
    assert job.delivered == frozenset({"pacs", "research"})


def test_recover_ignores_markers_of_destinations_the_job_does_not_have(spool: Spool) -> None:
    commit(spool, make_header(OLD, ("pacs", "archive")))
    spool.mark_delivered(OLD, "elsewhere")

    (job,) = spool.recover()

    assert job.delivered == frozenset()


def test_header_without_instance_is_skipped_then_removed_as_orphan(spool: Spool) -> None:
    commit(spool, make_header(OLD))
    spool.instance_path(OLD).unlink()  # a commit interrupted before the rename
    commit(spool, make_header(MID))

    assert [r.header.job_id for r in spool.recover()] == [MID]
    assert (spool.jobs / f"{OLD}.json").exists()  # recover() leaves it alone

    assert spool.remove_orphans() == 1

    assert names(spool.jobs) == {f"{MID}.dcm", f"{MID}.json"}
    assert [r.header.job_id for r in spool.recover()] == [MID]


def test_instance_without_header_is_removed_as_orphan(spool: Spool) -> None:
    commit(spool, make_header(OLD))
    (spool.jobs / f"{OLD}.json").unlink()
    (spool.jobs / f"{NEW}.dcm").write_bytes(b"stray")
    commit(spool, make_header(MID))

    assert [r.header.job_id for r in spool.recover()] == [MID]
    assert spool.remove_orphans() == 2

    assert names(spool.jobs) == {f"{MID}.dcm", f"{MID}.json"}


def test_remove_orphans_deletes_temp_files_and_keeps_complete_jobs(spool: Spool) -> None:
    commit(spool, make_header(OLD, ("pacs", "archive")))
    spool.mark_delivered(OLD, "pacs")
    (spool.jobs / f".{MID}.json.0badc0de.tmp").write_bytes(b"{")

    assert spool.remove_orphans() == 0

    assert names(spool.jobs) == {f"{OLD}.dcm", f"{OLD}.json", f"{OLD}.pacs.done"}


def test_recover_skips_an_unreadable_header(spool: Spool) -> None:
    commit(spool, make_header(OLD))
    commit(spool, make_header(MID))
    (spool.jobs / f"{OLD}.json").write_text("{not json")

    assert [r.header.job_id for r in spool.recover()] == [MID]
    assert (spool.jobs / f"{OLD}.json").exists()  # left in place for an operator


def test_remove_deletes_instance_header_and_markers(spool: Spool) -> None:
    header = make_header(OLD, ("pacs", "archive"))
    commit(spool, header)
    spool.mark_delivered(OLD, "pacs")
    spool.mark_delivered(OLD, "archive")
    other = make_header(MID, ("pacs", "archive"))
    commit(spool, other)
    spool.mark_delivered(MID, "pacs")

    spool.remove(header)

    assert names(spool.jobs) == {f"{MID}.dcm", f"{MID}.json", f"{MID}.pacs.done"}
    assert list(spool.recover()) == [RecoveredJob(other, frozenset({"pacs"}))]


def test_remove_is_safe_to_repeat(spool: Spool) -> None:
    header = make_header(OLD)
    commit(spool, header)

    spool.remove(header)
    spool.remove(header)

    assert names(spool.jobs) == set()


def test_discard_undoes_a_commit(spool: Spool) -> None:
    header = make_header(OLD)
    commit(spool, header)

    spool.discard(header)

    assert names(spool.jobs) == set()
    assert list(spool.recover()) == []


def test_clear_incoming_empties_incoming(spool: Spool) -> None:
    for i in range(3):
        (spool.incoming / f"half-{i}.part").write_bytes(b"x")
    commit(spool, make_header(OLD))

    assert spool.clear_incoming() == 3

    assert names(spool.incoming) == set()
    assert names(spool.jobs) == {f"{OLD}.dcm", f"{OLD}.json"}  # jobs are untouched
    assert spool.clear_incoming() == 0


def test_dead_letter_links_the_instance_and_writes_the_record(spool: Spool) -> None:
    header = make_header(OLD, ("pacs", "archive"))
    commit(spool, header, b"the instance")

    record_path = spool.dead_letter(header, "pacs", {"reason": "rejected", "attempts": 3})

    assert record_path == spool.dead_letters / f"{OLD}.pacs.json"
    linked = spool.dead_letters / f"{OLD}.dcm"
    assert linked.read_bytes() == b"the instance"
    assert os.path.samefile(linked, spool.instance_path(OLD))  # a hard link, not a copy
    record = json.loads(record_path.read_text())
    assert record["reason"] == "rejected"
    assert record["attempts"] == 3
    assert record["destination"] == "pacs"
    assert JobHeader.from_dict(record["job"]) == header


def test_dead_letter_survives_removal_of_the_job(spool: Spool) -> None:
    header = make_header(OLD, ("pacs", "archive"))
    commit(spool, header, b"the instance")
    spool.dead_letter(header, "pacs", {"reason": "rejected"})
    spool.dead_letter(header, "archive", {"reason": "io_retries_exhausted"})  # link exists

    spool.remove(header)

    assert names(spool.jobs) == set()
    assert names(spool.dead_letters) == {f"{OLD}.dcm", f"{OLD}.pacs.json", f"{OLD}.archive.json"}
    assert (spool.dead_letters / f"{OLD}.dcm").read_bytes() == b"the instance"
    archive = json.loads((spool.dead_letters / f"{OLD}.archive.json").read_text())
    assert archive["reason"] == "io_retries_exhausted"


@pytest.mark.parametrize("fsync", [True, False])
def test_write_atomically_leaves_no_temp_file(tmp_path: Path, fsync: bool) -> None:
    target = tmp_path / "record.json"
    target.write_bytes(b"old")

    write_atomically(target, b"new contents", fsync=fsync)

    assert target.read_bytes() == b"new contents"
    assert names(tmp_path) == {"record.json"}


def test_new_job_ids_are_unique_and_time_ordered() -> None:
    ids = [new_job_id() for _ in range(50)]

    assert len(set(ids)) == 50
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    assert [i[:16] for i in ids] == sorted(i[:16] for i in ids)
