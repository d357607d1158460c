"""The broker picks up what a dead acceptor committed but never handed over
(router/broker/orphans.py): journal segments whose writer is gone, read once."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from router.broker.orphans import OrphanedJournals
from router.broker.reaper import SpoolReaper
from router.core.journal import frame
from router.core.messages import JobHeader
from router.core.owned_names import (
    incoming_name,
    relay_copy_name,
    relay_request_id,
    relayed_get_files,
    relayed_get_name,
    relayed_move_name,
    writer_of,
    writer_pid,
)
from router.core.process_identity import ProcessTag, own_tag
from router.core.spool import Spool

from .helpers import make_header

DEAD, LIVE = 4242, 4343


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").create()


def _commit(spool: Spool, pid: int, *job_ids: str, instance: bool = True) -> Path:
    """What an acceptor with this pid leaves: instances in jobs/, records in its segment."""
    path = spool.journal / f"{pid}-0a0b0c0d-000001.log"
    with path.open("ab") as fh:
        for job_id in job_ids:
            header = make_header(job_id, ("pacs", "archive"))
            fh.write(frame(json.dumps(header.to_dict()).encode()))
            if instance:
                spool.instance_path(job_id).write_bytes(b"DICM")
    return path


def _ids(jobs: list) -> list[str]:  # type: ignore[type-arg]
    return [job.header.job_id for job in jobs]


def test_a_dead_writers_jobs_are_collected_once(spool: Spool) -> None:
    _commit(spool, DEAD, "job-a", "job-b")
    orphans = OrphanedJournals(spool, alive=lambda writer: False)
    (spool.journal / "notes.txt").touch()  # not a segment
    jobs = orphans.collect(lambda job_id: True)
    assert _ids(jobs) == ["job-a", "job-b"]
    assert jobs[0].header.destinations == ("pacs", "archive")
    assert jobs[0].delivered == frozenset()
    assert orphans.collect(lambda job_id: True) == []  # read once


def test_a_live_writer_is_waited_for(spool: Spool) -> None:
    _commit(spool, LIVE, "job-a")
    alive = {LIVE}
    orphans = OrphanedJournals(spool, alive=lambda writer: writer.pid in alive)
    orphans.start()
    assert orphans.collect(lambda job_id: True) == []
    alive.clear()  # the acceptor died after the broker started
    assert _ids(orphans.collect(lambda job_id: True)) == ["job-a"]


def test_segments_of_writers_dead_at_start_were_recovered_and_are_not_read_again(
        spool: Spool) -> None:
    _commit(spool, DEAD, "job-a")
    _commit(spool, LIVE, "job-b")
    alive = {LIVE}
    orphans = OrphanedJournals(spool, alive=lambda writer: writer.pid in alive)
    orphans.start()
    alive.clear()
    assert _ids(orphans.collect(lambda job_id: True)) == ["job-b"]


def test_known_finished_and_unreadable_jobs_are_skipped(spool: Spool) -> None:
    path = _commit(spool, DEAD, "job-queued", "job-new")
    _commit(spool, DEAD, "job-over", instance=False)  # delivered and removed already
    with path.open("ab") as fh:
        fh.write(frame(json.dumps({"job_id": "job-bad", "destinations": 3}).encode()))
        fh.write(frame(json.dumps({"job_id": "../escape"}).encode()))
    spool.instance_path("job-bad").write_bytes(b"DICM")
    (spool.jobs / "job-new.pacs.done").touch()  # reached one destination before the crash
    orphans = OrphanedJournals(spool, alive=lambda writer: False)
    jobs = orphans.collect(lambda job_id: job_id != "job-queued")
    assert _ids(jobs) == ["job-new"]
    assert jobs[0].delivered == frozenset({"pacs"})


def test_a_read_segment_goes_once_its_jobs_have_left_the_spool(spool: Spool) -> None:
    path = _commit(spool, DEAD, "job-a", "job-b")
    orphans = OrphanedJournals(spool, alive=lambda writer: False)
    assert len(orphans.collect(lambda job_id: True)) == 2
    spool.instance_path("job-b").unlink()  # out of order: job-a still queued
    orphans.collect(lambda job_id: True)
    assert path.exists()  # job-a's header is only here
    spool.instance_path("job-a").unlink()
    orphans.collect(lambda job_id: True)
    assert not path.exists()


def test_names_the_router_did_not_write_are_left_to_the_start(spool: Spool) -> None:
    (spool.journal / "compacted-by-hand.log").write_bytes(b"")
    assert writer_pid("compacted-by-hand.log") is None
    assert writer_pid("123-abcd-000001.log") == 123
    orphans = OrphanedJournals(spool, alive=lambda writer: False)
    assert orphans.collect(lambda job_id: True) == []


def test_a_dead_acceptors_half_received_files_are_deleted_and_a_live_ones_kept(
        spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    dead, live = spool.incoming / f"{DEAD}-ab12.dcm", spool.incoming / f"{LIVE}-cd34.dcm"
    unnamed = spool.incoming / "ef56.dcm"  # not a name the receiver gives: left to the start
    for path in (dead, live, unnamed):
        path.write_bytes(b"half a dataset")
    orphans = OrphanedJournals(spool, alive=lambda writer: writer.pid == LIVE)
    assert orphans.collect(lambda job_id: True) == []
    assert sorted(spool.incoming.iterdir()) == sorted([live, unnamed])
    assert "deleted 1 file(s) in incoming/ of a process that stopped" in caplog.text


def test_a_dead_workers_relay_copies_are_deleted_and_everything_else_kept(
        spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    job_id = "0123456789abcdef01234567"
    dead = spool.relay / f"{DEAD}-{job_id}.1a2b3c4d.dcm"
    live = spool.relay / f"{LIVE}-{job_id}.5e6f7a8b.dcm"
    # A C-GET's sub-operation and a relayed C-MOVE's instance wait for their acceptor (a
    # live one here); a name of another form (an older version's) is left to the start.
    c_get = spool.relay / f"{LIVE}-{'0' * 32}-3.dcm"
    c_move = spool.relay / f"{LIVE}-move-7-0f0f0f.dcm"
    older = spool.relay / "1234567890123456789012345678901-3.dcm"
    for path in (dead, live, c_get, c_move, older, spool.instance_path(job_id)):
        path.write_bytes(b"a copy")
    orphans = OrphanedJournals(spool, alive=lambda writer: writer.pid == LIVE)
    assert orphans.collect(lambda job_id: True) == []
    assert sorted(spool.relay.iterdir()) == sorted([live, c_get, c_move, older])
    assert "deleted 1 file(s) in relay/ of a process that stopped" in caplog.text
    assert spool.instance_path(job_id).exists()  # the job itself stays, to be delivered


def test_a_dead_acceptors_relayed_retrieve_instances_are_deleted(
        spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    request = f"{DEAD}-{'a' * 32}"  # relay_request_id() of an acceptor that died
    c_get = [spool.relay / f"{request}-{n}.dcm" for n in (1, 2)]
    c_move = spool.relay / f"{DEAD}-move-3-{'b' * 32}.dcm"
    for path in (*c_get, c_move):
        path.write_bytes(b"an instance")
    orphans = OrphanedJournals(spool, alive=lambda writer: writer.pid == LIVE)
    assert orphans.collect(lambda job_id: True) == []
    assert list(spool.relay.iterdir()) == []
    assert "deleted 3 file(s) in relay/ of a process that stopped" in caplog.text


def test_relayed_retrieve_names_start_with_the_acceptors_pid() -> None:
    request = relay_request_id()
    assert writer_pid(relayed_get_name(request, 12)) == os.getpid()  # workers/relay.py's
    assert relay_request_id() != request
    move = relayed_move_name(own_tag(), 65535)
    assert writer_pid(move) == os.getpid() and move.endswith(".dcm") and "-move-65535-" in move
    owner = ProcessTag(4321, "99", "0a1b2c3d")
    assert writer_of(relayed_move_name(owner, 1)) == owner  # the owner's, whoever writes it


def test_a_c_gets_own_instances_are_found_and_no_other(spool: Spool) -> None:
    """What its acceptor deletes when a relayed C-GET ends (router/relay/server.py)."""
    request, other = relay_request_id(), relay_request_id()
    mine = [spool.relay / relayed_get_name(request, n) for n in (1, 2, 10)]
    others = [spool.relay / relayed_get_name(other, 1),
              spool.relay / relayed_move_name(own_tag(), 1),
              spool.relay / relay_copy_name("0123456789abcdef01234567")]
    for path in (*mine, *others):
        path.write_bytes(b"an instance")
    assert sorted(relayed_get_files(spool.relay, request)) == sorted(mine)
    assert relayed_get_files(spool.relay, relay_request_id()) == []


def test_incoming_names_and_relay_copies_start_with_the_writers_pid() -> None:
    name = incoming_name()
    assert writer_pid(name) == os.getpid() and name.endswith(".dcm")
    assert incoming_name() != name
    copy = relay_copy_name("0123456789abcdef01234567")
    assert writer_pid(copy) == os.getpid() and copy.endswith(".dcm")
    assert writer_pid("12345678-0.dcm") is None  # longer than any pid


def test_the_reaper_says_which_jobs_it_has_yet_to_remove(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    header: JobHeader = make_header("job-a")
    spool.instance_path("job-a").write_bytes(b"DICM")
    go = threading.Event()
    remove = spool.remove
    monkeypatch.setattr(spool, "remove", lambda job, reuse=False: (go.wait(5), remove(job)))
    reaper = SpoolReaper(spool)
    reaper.remove(header)
    assert reaper.removing("job-a")  # settled, files still there: not an orphan
    go.set()
    reaper.close()
    assert not reaper.removing("job-a")
    assert not spool.instance_path("job-a").exists()
