"""A writer is alive only while the process with its pid is the one that wrote
(router/core/process_identity.py): a dead acceptor's pid held by another process, after a
wrap or a container's restart, no longer keeps its files and journal segment "owned"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.broker.orphans import OrphanedJournals
from router.broker.relay_routes import RelayRoutes
from router.core.journal import frame
from router.core.owned_names import incoming_name, relay_request_id, writer_of
from router.core.process_identity import (
    ProcessTag,
    boot_id,
    own_tag,
    parse_tag,
    process_start,
    running,
)
from router.core.spool import Spool

from .helpers import make_header


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that has nothing to do with the router."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _before(process: subprocess.Popen[bytes]) -> ProcessTag:
    """The tag of a writer that had this process's pid and died: it started earlier."""
    started = process_start(process.pid)
    assert started is not None
    return ProcessTag(process.pid, str(int(started) - 1), boot_id())


def _gone_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_a_pid_that_another_process_took_is_not_its_old_writer(
        stranger: subprocess.Popen[bytes]) -> None:
    itself = ProcessTag(stranger.pid, process_start(stranger.pid), boot_id())
    assert running(itself)
    assert not running(_before(stranger))
    assert not running(ProcessTag(stranger.pid, itself.started, "00000000"))  # another boot
    assert not running(ProcessTag(_gone_pid(), itself.started, boot_id()))


def test_a_name_without_a_start_time_falls_back_to_the_pid(
        stranger: subprocess.Popen[bytes]) -> None:
    """An older router's names (a spool it left) are still read."""
    assert writer_of(f"{stranger.pid}-abcd.dcm") == ProcessTag(stranger.pid)
    assert running(ProcessTag(stranger.pid))
    assert not running(ProcessTag(_gone_pid()))


def test_names_carry_the_writers_tag_and_parse_back() -> None:
    tag = own_tag()
    assert tag.pid == os.getpid() and tag.started == process_start(os.getpid())
    assert writer_of(incoming_name()) == tag and writer_of(relay_request_id()) == tag
    assert parse_tag(str(tag)) == tag and running(tag)
    for bad in ("12.34", "12.x.0a1b2c3d", "12.34.0A1B2C3D", "12345678", "", "a.1.0a1b2c3d"):
        assert parse_tag(bad) is None, bad


def test_a_forked_child_names_itself() -> None:
    own_tag()  # cached in the parent before the fork
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, str(own_tag()).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    tag = parse_tag(os.read(read, 100).decode())
    os.close(read)
    assert tag is not None and tag.pid == child and tag.boot == boot_id()


def test_a_dead_acceptors_segment_and_files_are_taken_though_its_pid_lives(
        tmp_path: Path, stranger: subprocess.Popen[bytes]) -> None:
    """The broker's look once a second, with the real check of /proc (the acceptor died
    after the broker started)."""
    spool = Spool(tmp_path / "spool").create()
    dead, live = _before(stranger), own_tag()
    with (spool.journal / f"{dead}-0a0b0c0d-000001.log").open("ab") as fh:
        fh.write(frame(json.dumps(make_header("job-orphan").to_dict()).encode()))
    spool.instance_path("job-orphan").write_bytes(b"DICM")
    half = spool.incoming / f"{dead}-ab12.dcm"
    mine = spool.incoming / f"{live}-cd34.dcm"
    for path in (half, mine):
        path.write_bytes(b"half a dataset")
    jobs = OrphanedJournals(spool).collect(lambda job_id: True)
    assert [job.header.job_id for job in jobs] == ["job-orphan"]
    assert list(spool.incoming.iterdir()) == [mine]


def test_a_dead_acceptors_relayed_requests_are_cancelled_though_its_pid_lives(
        stranger: subprocess.Popen[bytes]) -> None:
    routes = RelayRoutes()
    gone, mine = f"{_before(stranger)}-one", relay_request_id()
    routes.open(gone, b"a1", b"w1", "C-FIND")
    routes.open(mine, b"a1", b"w1", "C-FIND")
    assert routes.acceptors_gone(running) == [(b"w1", gone)]
    assert list(routes.routes) == [mine]
