"""router/core/spool.py: durable job files, recovery, orphans and dead letters (tmp_path only)."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import threading
import time
from pathlib import Path

import pytest

from router.core.durable_files import write_atomically
from router.core.errors import RouterError
from router.core.journal import Journal, read_records, segments, whole_records
from router.core.messages import JobHeader
from router.core.spool import RecoveredJob, Spool, new_job_id

from .helpers import fail_fdatasync_once, make_header

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


def test_a_spool_path_that_is_a_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(RouterError) as info:
        Spool(tmp_path / "afile").create()
    assert str(info.value) == (f"spool.path {tmp_path / 'afile'}: cannot create "
                               f"{tmp_path / 'afile' / 'incoming'}: Not a directory")


def test_commit_moves_the_file_into_jobs_with_a_header(spool: Spool) -> None:
    header = make_header(OLD, ("pacs", "archive"))
    received = receive(spool, b"instance")

    target = spool.commit(header, received)

    assert target == spool.jobs / f"{OLD}.dcm" == spool.instance_path(OLD)
    assert target.read_bytes() == b"instance"
    assert not received.exists()
    assert names(spool.incoming) == set()
    assert names(spool.jobs) == {f"{OLD}.dcm"}  # the header is in the journal
    (segment,) = segments(spool.journal)
    (stored,) = read_records(segment)
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
    spool.rewrite_header(make_header(OLD, ("archive",)))
    spool.instance_path(OLD).unlink()  # a crash inside remove()
    commit(spool, make_header(MID))

    assert [r.header.job_id for r in spool.recover()] == [MID]
    assert (spool.jobs / f"{OLD}.json").exists()  # recover() leaves it alone

    assert spool.remove_orphans() == 1

    assert names(spool.jobs) == {f"{MID}.dcm"}
    assert [r.header.job_id for r in spool.recover()] == [MID]


def test_journal_record_without_instance_is_skipped_and_compacted_away(spool: Spool) -> None:
    commit(spool, make_header(OLD))
    spool.instance_path(OLD).unlink()  # a commit never acknowledged, or a job removed
    commit(spool, make_header(MID))

    assert [r.header.job_id for r in spool.recover()] == [MID]
    assert spool.remove_orphans() == 0

    records = [r for path in segments(spool.journal) for r in read_records(path)]
    assert [r["job_id"] for r in records] == [MID]
    assert [r.header.job_id for r in spool.recover()] == [MID]


def test_instance_without_header_is_removed_as_orphan(spool: Spool) -> None:
    (spool.jobs / f"{OLD}.dcm").write_bytes(b"renamed in, never journaled")
    (spool.jobs / f"{NEW}.dcm").write_bytes(b"stray")
    commit(spool, make_header(MID))

    assert [r.header.job_id for r in spool.recover()] == [MID]
    assert spool.remove_orphans() == 2

    assert names(spool.jobs) == {f"{MID}.dcm"}
    assert [r.header.job_id for r in spool.recover()] == [MID]


def test_remove_orphans_deletes_temp_files_and_keeps_complete_jobs(spool: Spool) -> None:
    commit(spool, make_header(OLD, ("pacs", "archive")))
    spool.mark_delivered(OLD, "pacs")
    (spool.jobs / f".{MID}.json.0badc0de.tmp").write_bytes(b"{")

    assert spool.remove_orphans() == 0

    assert names(spool.jobs) == {f"{OLD}.dcm", f"{OLD}.pacs.done"}
    assert [r.header.job_id for r in spool.recover()] == [OLD]


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

    assert names(spool.jobs) == {f"{MID}.dcm", f"{MID}.pacs.done"}
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
    assert names(spool.jobs) == {f"{OLD}.dcm"}  # jobs are untouched
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


def test_a_dead_letter_that_cannot_be_written_leaves_nothing_behind(spool: Spool) -> None:
    """Its record's place is taken (a directory here; a full disk in
    tests/integration/test_spool_full.py): before, the instance's link and the record's temp
    file stayed, an instance without a record that `list` never showed."""
    header = make_header(OLD, ("pacs",))
    commit(spool, header, b"the instance")
    (spool.dead_letters / f"{OLD}.pacs.json").mkdir()

    with pytest.raises(OSError):
        spool.dead_letter(header, "pacs", {"reason": "rejected"})

    assert names(spool.dead_letters) == {f"{OLD}.pacs.json"}


def test_a_replay_cut_short_is_cleaned_at_start_and_its_dead_letter_stays(
        spool: Spool) -> None:
    """A crash (or a full disk) in `dead-letters replay` left a temp file or a header
    without its instance in replay/, which nothing ever removed."""
    header = make_header(OLD, ("pacs",))
    commit(spool, header, b"the instance")
    spool.dead_letter(header, "pacs", {"reason": "rejected"})
    (spool.replay / f".{MID}.json.1234abcd.tmp").write_bytes(b"{")
    (spool.replay / f"{MID}.json").write_bytes(b"{}")  # its instance never linked
    with pytest.raises(FileNotFoundError):  # the instance is gone: nothing half-staged
        spool.stage_replay(make_header(NEW), spool.jobs / "missing.dcm")
    assert names(spool.replay) == {f".{MID}.json.1234abcd.tmp", f"{MID}.json"}

    spool.remove_orphans()

    assert names(spool.replay) == set()
    assert f"{OLD}.pacs.json" in names(spool.dead_letters)


def test_write_atomically_removes_its_temp_file_when_it_fails(tmp_path: Path) -> None:
    (tmp_path / "record.json").mkdir()  # os.replace cannot put a file there

    with pytest.raises(OSError):
        write_atomically(tmp_path / "record.json", b"new contents")

    assert names(tmp_path) == {"record.json"}


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


def test_job_ids_keep_their_order_when_the_system_clock_steps_back() -> None:
    """v1 received, the clock stepped back two hours, v2 (a correction) received: after a
    restart recovery replays by job id, and v2 must still come after v1."""
    now = [time.time_ns()]
    first = new_job_id(clock=lambda: now[0])
    now[0] -= 7200 * 10**9
    second = new_job_id(clock=lambda: now[0])
    third = new_job_id(clock=lambda: now[0])

    assert first < second < third
    assert sorted([third, second, first]) == [first, second, third]


# --- group commit through the journal: what a crash can leave, and what it costs -----------


def journal_records(spool: Spool) -> list[str]:
    return [r["job_id"] for path in segments(spool.journal) for r in read_records(path)]


@pytest.mark.parametrize("tail", [b"", b"\xffJR1\x40\x00", b"\x00" * 4096, b"\xffJR1garbage"])
def test_a_torn_journal_tail_loses_only_the_unsynced_record(spool: Spool, tail: bytes) -> None:
    commit(spool, make_header(OLD))
    commit(spool, make_header(MID))
    (segment,) = segments(spool.journal)
    whole = segment.read_bytes()
    # NEW's record was being appended when the machine died: only part of it reached the
    # disk (its commit never returned, so its sender was never told Success).
    commit(spool, make_header(NEW))
    record = segment.read_bytes()[len(whole):]
    segment.write_bytes(whole + record[: len(record) // 2] + tail)

    assert [r.header.job_id for r in spool.recover()] == [OLD, MID]
    assert spool.remove_orphans() == 1  # NEW's instance: never acknowledged

    assert names(spool.jobs) == {f"{OLD}.dcm", f"{MID}.dcm"}
    assert [r.header.job_id for r in spool.recover()] == [OLD, MID]


def test_a_rewritten_header_wins_over_the_journal(spool: Spool) -> None:
    commit(spool, make_header(OLD, ("pacs",)))
    drained = make_header(OLD, ("archive",))

    spool.rewrite_header(drained)

    assert [r.header for r in spool.recover()] == [drained]
    spool.remove_orphans()  # compaction keeps the journal out of it
    assert [r.header for r in spool.recover()] == [drained]


def test_compaction_keeps_every_queued_job_and_is_safe_to_repeat(spool: Spool) -> None:
    headers = [make_header(f"{i:016x}aaaaaaaa", ("pacs",)) for i in range(1, 7)]
    for header in headers:
        commit(spool, header)
    for header in headers[::2]:
        spool.remove(header)  # delivered

    spool.remove_orphans()
    spool.remove_orphans()

    assert [r.header for r in spool.recover()] == headers[1::2]
    assert journal_records(spool) == [h.job_id for h in headers[1::2]]
    assert len(segments(spool.journal)) == 1


def test_closed_segments_go_once_their_jobs_are_gone(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("router.core.spool.SEGMENT_RECORDS", 2)
    headers = [make_header(f"{i:016x}aaaaaaaa") for i in range(1, 8)]
    for header in headers[:4]:
        commit(spool, header)  # two full segments
    spool.remove(headers[0])
    spool.remove(headers[1])  # the first segment's jobs are over; the second's are queued
    for header in headers[4:]:
        commit(spool, header)  # rotations trim

    assert journal_records(spool) == [h.job_id for h in headers[2:]]
    assert [r.header for r in spool.recover()] == headers[2:]


def test_a_closed_segment_goes_once_its_jobs_are_gone_without_another_commit(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Soak: a full segment whose jobs were all delivered stayed on the spool until the next
    4,096 commits (an idle router kept it for good): segments were looked at only when a new
    one opened. The acceptor's periodic trim_journal deletes it."""
    monkeypatch.setattr("router.core.spool.SEGMENT_RECORDS", 2)
    headers = [make_header(f"{i:016x}aaaaaaaa") for i in range(1, 4)]
    for header in headers:
        commit(spool, header)  # a full segment, then one record in the next
    spool.trim_journal()
    assert len(segments(spool.journal)) == 2  # its jobs are still queued
    spool.remove(headers[0])
    spool.trim_journal()
    assert len(segments(spool.journal)) == 2  # one of them still is
    spool.remove(headers[1])
    spool.trim_journal()
    assert journal_records(spool) == [headers[2].job_id]
    assert len(segments(spool.journal)) == 1
    commit(spool, make_header(f"{9:016x}aaaaaaaa"))  # the open segment goes on
    assert [r.header.job_id for r in spool.recover()] == [headers[2].job_id, f"{9:016x}aaaaaaaa"]


def test_a_failed_journal_sync_fails_the_commit_and_the_next_starts_a_new_segment(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit(spool, make_header(OLD))
    fail_fdatasync_once(monkeypatch, errno.EIO)

    with pytest.raises(OSError) as caught:
        commit(spool, make_header(MID))
    assert caught.value.errno == errno.EIO
    spool.discard(make_header(MID))  # what the acceptor does with a failed commit
    commit(spool, make_header(NEW))

    assert len(segments(spool.journal)) == 2  # the failed one is never appended to again
    assert [r.header.job_id for r in spool.recover()] == [OLD, NEW]


def test_concurrent_commits_cost_one_fsync_each_plus_shared_syncs(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figure the README quotes: N commits in flight together, N instance fsyncs and a
    couple of shared syncs. The first journal sync is held until every other commit has
    appended its record, so the grouping is certain, not a matter of timing."""
    count = 32
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    synced = {"instance": 0, "directory": 0, "journal": 0}
    everyone_appended = threading.Event()

    def fsync(fd: int) -> None:
        synced["directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "instance"] += 1
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        synced["journal"] += 1
        if synced["journal"] == 1:
            assert everyone_appended.wait(30)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    headers = [make_header(f"{i:016x}aaaaaaaa") for i in range(1, count + 1)]
    threads = [threading.Thread(target=commit, args=(spool, h)) for h in headers]
    for thread in threads:
        thread.start()
    for _ in range(3000):
        writer = spool._journal_writer
        current = writer._current if writer is not None else None
        if current is not None and len(current.job_ids) == count:
            break
        threading.Event().wait(0.01)
    everyone_appended.set()
    for thread in threads:
        thread.join(30)

    assert [r.header for r in spool.recover()] == headers
    commits, syncs = spool.commit_counts()
    assert commits == count
    assert syncs <= 2  # the leader's own batch, then everyone else's
    assert synced["instance"] == count
    assert synced["journal"] == syncs
    assert synced["directory"] == syncs + 1  # jobs/ per batch, journal/ for its new segment
    print(f"\nGROUP COMMIT {count} concurrent commits: {synced}, {syncs} shared syncs")


def test_compaction_on_a_full_disk_keeps_the_old_segments(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = [make_header(OLD), make_header(MID)]
    for header in headers:
        commit(spool, header)
    before = segments(spool.journal)

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("router.core.spool.write_atomically", full)

    assert spool.remove_orphans() == 0

    assert segments(spool.journal) == before
    assert [r.header for r in spool.recover()] == headers


class Crash(BaseException):
    """The process stops here: files stay as the steps before left them."""


@pytest.mark.parametrize("step", ["fsync", "replace", "write", "fdatasync", "fdatasync-lost"])
def test_a_crash_at_any_step_of_a_commit_leaves_the_job_whole_or_gone(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A commit interrupted at each of its steps (never acknowledged), then the start-up
    clean-up and recovery: the job is recovered whole or leaves no trace. 'fdatasync-lost'
    also drops the journal bytes the interrupted sync had not made durable."""
    acked = make_header(OLD)
    commit(spool, acked, b"acknowledged")  # an earlier commit that returned
    (segment,) = segments(spool.journal)
    synced_size = segment.stat().st_size
    name = step.split("-")[0]
    real = getattr(os, name)

    def crash(*args: object) -> object:
        raise Crash(step)

    monkeypatch.setattr(os, name, crash)
    header = make_header(MID)
    with pytest.raises((Crash, OSError)):  # the leader converts a crash in its sync
        commit(spool, header, b"interrupted")
    monkeypatch.setattr(os, name, real)
    if step == "fdatasync-lost":
        with segment.open("r+b") as fh:
            fh.truncate(synced_size)

    spool.clear_incoming()
    spool.remove_orphans()
    recovered = {r.header.job_id: r.header for r in spool.recover()}

    assert recovered[OLD] == acked
    assert spool.instance_path(OLD).read_bytes() == b"acknowledged"
    if MID in recovered:
        assert recovered[MID] == header
        assert spool.instance_path(MID).read_bytes() == b"interrupted"
    else:
        assert names(spool.jobs) == {f"{OLD}.dcm"}
        assert journal_records(spool) == [OLD]
    assert names(spool.incoming) == set()
    assert (MID in recovered) == (step == "fdatasync")


def test_concurrent_commits_across_segment_rotations_keep_every_job(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotation and trimming while other threads append and sync: no record lost, no fd
    closed under a sync, segments of finished jobs deleted."""
    monkeypatch.setattr("router.core.spool.SEGMENT_RECORDS", 3)
    errors: list[BaseException] = []
    kept: list[JobHeader] = []
    lock = threading.Lock()

    def sender(n: int) -> None:
        try:
            for i in range(25):
                header = make_header(f"{i:08x}{n:08x}00000000")
                commit(spool, header)
                if i % 2:
                    spool.remove(header)  # delivered while others still commit
                else:
                    with lock:
                        kept.append(header)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert [r.header for r in spool.recover()] == sorted(kept, key=lambda h: h.job_id)
    assert {h.job_id for h in kept} <= set(journal_records(spool))
    for header in kept:
        spool.remove(header)
    later = [make_header(f"{i:016x}ffffffff") for i in range(1, 5)]
    for header in later:
        commit(spool, header)  # rotates, and trims every segment of finished jobs

    assert len(segments(spool.journal)) <= 3
    assert [r.header for r in spool.recover()] == later


# Regression (a bug hunt, 2026-12-07): 4 bytes overwritten in the middle of a segment made
# the reader stop there; every later job's instance had no header, was taken for a commit
# never acknowledged and deleted at the next start: 40 of 50 acknowledged instances gone.


def test_a_segment_damaged_in_the_middle_loses_only_the_damaged_record(spool: Spool) -> None:
    for job_id in (OLD, MID, NEW):
        commit(spool, make_header(job_id))
    (segment,) = segments(spool.journal)
    data = bytearray(segment.read_bytes())
    start = data.find(MID.encode())
    data[start:start + 4] = b"XXXX"  # MID's payload no longer matches its CRC
    segment.write_bytes(bytes(data))

    damage: list[int] = []
    assert [r["job_id"] for r in read_records(segment, damage)] == [OLD, NEW]
    assert damage and damage[0] > 0
    assert spool.remove_orphans() == 0  # nothing deleted on a guess
    assert spool.unconfirmed == [MID]
    assert names(spool.jobs) == {f"{OLD}.dcm", f"{NEW}.dcm"}
    record = json.loads((spool.dead_letters / f"{MID}.unrouted.json").read_text())
    assert record["reason"] == "unconfirmed" and record["job"]["destinations"] == ["unrouted"]
    assert (spool.dead_letters / f"{MID}.dcm").read_bytes() == b"DICM-instance-bytes"
    assert [r.header.job_id for r in spool.recover()] == [OLD, NEW]


# Regression: a closed segment cut short (truncated) read as a crash's torn tail, and the
# instances of the acknowledged records it lost were deleted at start as interrupted commits.


def record_ends(segment: Path) -> list[int]:
    """The offset where each record of a segment ends (MAGIC, length, CRC, payload)."""
    data, ends = segment.read_bytes(), [0]
    while ends[-1] < len(data):
        ends.append(ends[-1] + 12 + struct.unpack_from("<I", data, ends[-1] + 4)[0])
    return ends[1:]


@pytest.mark.parametrize("cut", ["between records", "inside a record"])
def test_a_closed_segment_cut_short_keeps_its_lost_jobs_as_unconfirmed(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    monkeypatch.setattr("router.core.spool.SEGMENT_RECORDS", 3)
    ids = [f"{i:016x}aaaaaaaa" for i in range(1, 6)]
    for job_id in ids:
        commit(spool, make_header(job_id))  # returned: every one acknowledged
    closed, _ = segments(spool.journal)
    ends = record_ends(closed)
    keep = ends[0] if cut == "between records" else (ends[0] + ends[1]) // 2
    closed.write_bytes(closed.read_bytes()[:keep])  # records 2 and 3 lost

    assert spool.remove_orphans() == 0  # nothing deleted on a guess
    assert spool.unconfirmed == ids[1:3]
    assert names(spool.jobs) == {f"{i}.dcm" for i in (ids[0], *ids[3:])}
    assert {p.name for p in spool.dead_letters.glob("*.json")} == {
        f"{i}.unrouted.json" for i in ids[1:3]}
    assert [r.header.job_id for r in spool.recover()] == [ids[0], *ids[3:]]


def test_the_last_segments_torn_tail_after_a_closed_one_is_a_crash_not_damage(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the last segment a writer appended to can end torn by a crash: its orphan is
    deleted, not kept for an operator (a crash must not fill the dead letters)."""
    monkeypatch.setattr("router.core.spool.SEGMENT_RECORDS", 3)
    ids = [f"{i:016x}aaaaaaaa" for i in range(1, 6)]
    for job_id in ids:
        commit(spool, make_header(job_id))
    _, last = segments(spool.journal)
    last.write_bytes(last.read_bytes()[:record_ends(last)[0] + 20])  # the 5th half written

    assert spool.remove_orphans() == 1
    assert spool.unconfirmed == []
    assert names(spool.dead_letters) == set()
    assert [r.header.job_id for r in spool.recover()] == ids[:4]


def test_whole_records_trusts_only_each_writers_last_segment_to_end_torn(
        tmp_path: Path) -> None:
    paths = [tmp_path / n for n in ("11-0a0b0c0d-000001.log", "11-0a0b0c0d-000002.log",
                                    "11-ffffffff-000003.log", "22-0a0b0c0d-000007.log",
                                    "33-12345678-compacted.log", "notes.log",
                                    # Names with the writer's start time and boot:
                                    "44.5168166.23d8bd1d-0a0b0c0d-000001.log",
                                    "44.5168166.23d8bd1d-0a0b0c0d-000002.log")]

    assert list(whole_records(paths, 4096).values()) == [4096, None, None, None, 0, 0,
                                                          4096, None]


def test_a_full_segment_is_synced_before_the_next_one_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else a crash in the batch that rotates could leave a torn end in a segment that is
    not its writer's last, which start-up must take for damage."""
    journal = Journal(tmp_path, lambda job_id: True, segment_records=2)
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(os.fstat(fd).st_size))
    journal.append("a", b"{}")
    journal.append("b", b"{}")
    assert synced == []  # the group sync's job, until the segment is full

    journal.append("c", b"{}")

    first, second = segments(tmp_path)
    assert synced == [first.stat().st_size]
    assert list(read_records(second)) == [{}]


def test_a_failed_sync_of_a_full_segment_fails_the_append_and_the_next_rotates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path, lambda job_id: True, segment_records=1)
    journal.append("a", b"{}")
    fail_fdatasync_once(monkeypatch, errno.EIO)

    with pytest.raises(OSError):
        journal.append("b", b"{}")
    journal.append("c", b"{}")

    assert [len(list(read_records(p))) for p in segments(tmp_path)] == [1, 1]


def test_the_file_meta_of_an_unconfirmed_instance_names_it(tmp_path: Path) -> None:
    from router.acceptor.store_receiver import file_meta
    from router.core.unconfirmed import file_meta_uids

    path = tmp_path / "x.dcm"
    path.write_bytes(file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1",
                               "1.2.3", "ROUTER") + b"\x08\x00\x16\x00UI")
    assert file_meta_uids(path) == {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                                    "sop_instance_uid": "1.2.3.4",
                                    "transfer_syntax_uid": "1.2.840.10008.1.2.1"}
    path.write_bytes(b"not DICOM")
    assert file_meta_uids(path) == {}


def test_recover_skips_a_header_it_cannot_read_and_counts_it(spool: Spool) -> None:
    """A directory where a header should be (or EACCES, EIO) raised out of recover() and
    the broker died at every start: a crash loop. Now that job is left in place, logged and
    counted, and the others are recovered."""
    from router.core import metrics

    commit(spool, make_header(OLD))
    commit(spool, make_header(MID))
    (spool.jobs / f"{OLD}.json").unlink(missing_ok=True)  # in the journal, if not here
    (spool.jobs / f"{OLD}.json").mkdir()
    before = metrics.SPOOL_ERRORS.labels("recover")._value.get()

    assert [r.header.job_id for r in spool.recover()] == [MID]
    assert (spool.jobs / f"{OLD}.dcm").exists()  # left in place for an operator
    assert metrics.SPOOL_ERRORS.labels("recover")._value.get() == before + 1


def test_journal_segments_and_written_records_are_the_routers_alone(spool: Spool) -> None:
    """Job headers name SOP instances and calling AE titles: their journal segments and
    records were 0644 beside 0600 instances (a privacy audit)."""
    old = os.umask(0o022)
    try:
        commit(spool, make_header(OLD))
        write_atomically(spool.root / "record.json", b"{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in segments(spool.journal)}
    assert modes and set(modes.values()) == {0o600}, modes
    assert stat.S_IMODE((spool.root / "record.json").stat().st_mode) == 0o600
