"""router/core/recycling.py: which settled instance files are written over, and how a taker
gets one; with the spool (remove) and the receiver (the old content's tail cut off)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from router.acceptor.store_receiver import StoreReceiver
from router.core import recycling
from router.core.recycling import MAX_FILE_BYTES, POOL_FILES, FileRecycler
from router.core.spool import Spool

from .helpers import make_header
from .test_spool import commit


def spent(folder: Path, name: str, data: bytes = b"old instance bytes") -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_a_lone_small_file_is_retired_and_taken_once(tmp_path: Path) -> None:
    pool, jobs = tmp_path / "recycle", tmp_path / "jobs"
    pool.mkdir(), jobs.mkdir()
    recycler = FileRecycler(pool)
    path = spent(jobs, "j1.dcm")
    inode = path.stat().st_ino

    assert recycler.retire(path)
    assert not path.exists() and [p.stat().st_ino for p in pool.iterdir()] == [inode]

    target = tmp_path / "incoming.dcm"
    taken = recycler.reuse(target)
    assert taken is not None
    fd, stale = taken
    os.close(fd)
    assert stale == len(b"old instance bytes")
    assert target.stat().st_ino == inode and list(pool.iterdir()) == []
    assert recycler.reused == 1
    assert recycler.reuse(tmp_path / "second.dcm") is None  # empty: the caller creates one


def test_a_file_linked_elsewhere_is_never_retired(tmp_path: Path) -> None:
    # A dead letter (or a replay) shares the instance's inode: writing over it would change
    # the dead letter an operator may still replay.
    pool, jobs = tmp_path / "recycle", tmp_path / "jobs"
    pool.mkdir(), jobs.mkdir()
    path = spent(jobs, "j1.dcm")
    os.link(path, tmp_path / "dead-letter.dcm")

    assert not FileRecycler(pool).retire(path)
    assert path.exists() and list(pool.iterdir()) == []


def test_large_files_missing_files_and_a_full_pool_are_not_retired(tmp_path: Path) -> None:
    pool, jobs = tmp_path / "recycle", tmp_path / "jobs"
    pool.mkdir(), jobs.mkdir()
    recycler = FileRecycler(pool)
    large = jobs / "large.dcm"
    with open(large, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    assert not recycler.retire(large)
    assert not recycler.retire(jobs / "gone.dcm")
    for i in range(POOL_FILES):
        assert recycler.retire(spent(jobs, f"j{i}.dcm"))
    assert not recycler.retire(spent(jobs, "one-more.dcm"))
    assert len(list(pool.iterdir())) == POOL_FILES


def test_the_reaper_counts_what_acceptors_took(tmp_path: Path) -> None:
    # Acceptors in other processes take without telling; the reaper counts the pool again.
    pool, jobs = tmp_path / "recycle", tmp_path / "jobs"
    pool.mkdir(), jobs.mkdir()
    reaper, acceptor = FileRecycler(pool), FileRecycler(pool)
    for i in range(POOL_FILES):
        assert reaper.retire(spent(jobs, f"j{i}.dcm"))
    for i in range(POOL_FILES):
        taken = acceptor.reuse(tmp_path / f"in{i}.dcm")
        assert taken is not None
        os.close(taken[0])
    retired = sum(reaper.retire(spent(jobs, f"k{i}.dcm"))
                  for i in range(2 * recycling.RECOUNT_EVERY))
    assert retired >= recycling.RECOUNT_EVERY


def test_concurrent_takers_never_get_the_same_file(tmp_path: Path) -> None:
    pool, jobs = tmp_path / "recycle", tmp_path / "jobs"
    pool.mkdir(), jobs.mkdir()
    for i in range(40):
        FileRecycler(pool).retire(spent(jobs, f"j{i}.dcm"))
    takers = [FileRecycler(pool) for _ in range(4)]  # as if in four acceptor processes
    inodes: list[int] = []
    lock = threading.Lock()

    def take(recycler: FileRecycler, index: int) -> None:
        for n in range(20):
            taken = recycler.reuse(tmp_path / f"t{index}-{n}.dcm")
            if taken is not None:
                with lock:
                    inodes.append(os.fstat(taken[0]).st_ino)
                os.close(taken[0])

    threads = [threading.Thread(target=take, args=(r, i)) for i, r in enumerate(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(inodes) == 40 and len(set(inodes)) == 40


def test_the_receiver_cuts_off_the_old_content(tmp_path: Path) -> None:
    pool = tmp_path / "recycle"
    pool.mkdir()
    recycler = FileRecycler(pool)
    old = b"O" * 5000
    recycler.retire(spent(tmp_path, "settled.dcm", old))
    receiver = StoreReceiver(tmp_path, b"META", None, recycler)
    receiver.write_parts([b"new dataset"])
    path = receiver.finish()
    assert path.read_bytes() == b"METAnew dataset"  # nothing of the old instance after it
    assert receiver.synced and recycler.reused == 1
    # A longer new instance simply grows the file.
    recycler.retire(path)
    receiver = StoreReceiver(tmp_path, b"META", None, recycler)
    receiver.write_parts([b"N" * 9000])
    assert receiver.finish().read_bytes() == b"META" + b"N" * 9000


def test_a_failed_cut_answers_out_of_resources_and_keeps_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = tmp_path / "recycle"
    pool.mkdir()
    recycler = FileRecycler(pool)
    recycler.retire(spent(tmp_path, "settled.dcm", b"O" * 5000))
    receiver = StoreReceiver(tmp_path, b"META", None, recycler)
    receiver.write_parts([b"new"])

    def failing(fd: int, length: int) -> None:
        if length:
            raise OSError(5, "Input/output error")
        os.truncate(f"/proc/self/fd/{fd}", 0)

    monkeypatch.setattr(os, "ftruncate", failing)
    path = receiver.finish()
    assert receiver.disk_full and not receiver.synced  # the C-STORE is answered 0xA700
    assert path.read_bytes() == b""


def test_spool_remove_recycles_only_when_told(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").create()
    reusable, leased_twice = make_header("j1"), make_header("j2")
    commit(spool, reusable)
    commit(spool, leased_twice)

    spool.remove(reusable, reuse=True)
    spool.remove(leased_twice)  # a worker may still be reading it: unlinked

    assert list(spool.jobs.iterdir()) == []
    assert [p.name for p in spool.recycled.iterdir()] == ["j1.dcm"]


def test_near_the_watermark_nothing_is_retired_and_the_pool_is_emptied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The pool's files hold space: a spool near its watermark must get it back, or the
    # acceptor would keep refusing work with the space sitting in recycle/.
    caplog.set_level("INFO", logger="router.core.recycling")
    pool, jobs = tmp_path / "recycle", tmp_path / "jobs"
    pool.mkdir(), jobs.mkdir()
    recycler = FileRecycler(pool)
    for i in range(3):
        assert recycler.retire(spent(jobs, f"j{i}.dcm"))
    free = os.statvfs(pool).f_bavail * os.statvfs(pool).f_frsize
    recycler.keep_free = lambda total: free  # twice what is free: too close
    recycler._until_recount = 0  # the next retirement looks at the disk
    assert not recycler.retire(spent(jobs, "j3.dcm"))
    assert list(pool.iterdir()) == []
    recycler._until_recount = 0
    assert not recycler.retire(jobs / "j3.dcm")  # still low: said once, not again
    recycler.keep_free = lambda total: 0
    recycler._until_recount = 0
    assert recycler.retire(jobs / "j3.dcm")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert "deleted instead of recycled" in said[0] and "recycled" in said[1]


def test_a_link_in_the_pool_is_never_written_through(tmp_path: Path) -> None:
    # Only the reaper fills the pool; anything else found there (a symbolic link to a file
    # outside the spool) must not be opened for writing.
    pool = tmp_path / "recycle"
    pool.mkdir()
    victim = spent(tmp_path, "outside.txt", b"not the router's")
    (pool / "planted.dcm").symlink_to(victim)

    assert FileRecycler(pool).reuse(tmp_path / "incoming.dcm") is None
    assert victim.read_bytes() == b"not the router's"
    assert not (tmp_path / "incoming.dcm").exists()


def test_the_pool_is_emptied_at_start(tmp_path: Path) -> None:
    # After a power cut on a filesystem without a journal, a rename's old name can come back
    # beside the new one: a pool entry found at start may be an acknowledged job's instance.
    spool = Spool(tmp_path / "spool").create()
    header = make_header("j1")
    commit(spool, header)
    spool.remove(header, reuse=True)
    assert list(spool.recycled.iterdir())

    assert spool.clear_incoming() == 0  # nothing half-received: the pool is not counted
    assert list(spool.recycled.iterdir()) == []


def test_with_few_free_inodes_nothing_is_retired_and_the_pool_is_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each pooled file holds an inode: bytes to spare do not make room for a commit's files.
    pool, jobs = tmp_path / "recycle", tmp_path / "jobs"
    pool.mkdir(), jobs.mkdir()
    recycler = FileRecycler(pool)
    assert recycler.retire(spent(jobs, "j0.dcm"))
    real = os.statvfs(pool)

    class FewInodes:
        f_bavail, f_frsize, f_blocks = real.f_bavail, real.f_frsize, real.f_blocks
        f_files, f_favail = 60, 20

    monkeypatch.setattr(recycling.os, "statvfs", lambda path: FewInodes)
    recycler._until_recount = 0
    assert not recycler.retire(spent(jobs, "j1.dcm"))
    assert list(pool.iterdir()) == []
