"""router/core/group_commit.py: concurrent commits share syncs; nobody returns before the
sync covering its record; a failed sync fails exactly its batch. Threads and events only:
the grouping is forced by a sync that blocks until the test lets it go, never by timing."""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field

import pytest

from router.core.group_commit import GroupCommit


@dataclass
class FakeDisk:
    """Records staged under the lock; a sync makes the closed ones durable. The first sync
    blocks until `release` is set, so that everything staged meanwhile must group."""

    staged: list[int] = field(default_factory=list)
    durable: set[int] = field(default_factory=set)
    batches: list[list[int]] = field(default_factory=list)
    syncing: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    fail_batch: int | None = None  # the index of the batch whose sync fails (EIO)

    def close(self) -> list[int]:
        batch, self.staged = self.staged, []
        return batch

    def sync(self, batch: list[int]) -> None:
        self.batches.append(batch)
        self.syncing.set()
        assert self.release.wait(30), "the test never released the sync"
        if self.fail_batch == len(self.batches) - 1:
            raise OSError(errno.EIO, "injected fsync failure")
        self.durable.update(batch)


def run_commits(disk: FakeDisk, committer: GroupCommit[list[int]], items: range,
                outcomes: dict[int, str]) -> list[threading.Thread]:
    def one(item: int) -> None:
        try:
            committer.commit(lambda: disk.staged.append(item))
        except OSError as exc:
            outcomes[item] = f"error {exc.errno}"
        else:
            # The ack rule: returning means the sync covering this record has completed.
            outcomes[item] = "durable" if item in disk.durable else "RETURNED EARLY"

    threads = [threading.Thread(target=one, args=(i,)) for i in items]
    for thread in threads:
        thread.start()
    return threads


def wait_staged(disk: FakeDisk, committer: GroupCommit[list[int]], count: int) -> None:
    """Until `count` commits sit in the open batch (read under the committer's lock)."""
    def staged() -> int:
        with committer._cond:
            return len(disk.staged)

    for _ in range(3000):
        if staged() >= count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"only {staged()} of {count} commits staged")


def test_concurrent_commits_share_one_sync_and_wait_for_it() -> None:
    disk = FakeDisk()
    committer = GroupCommit(disk.close, disk.sync)
    outcomes: dict[int, str] = {}

    first = run_commits(disk, committer, range(1), outcomes)
    assert disk.syncing.wait(30)  # the leader is inside its sync of [0]
    rest = run_commits(disk, committer, range(1, 33), outcomes)
    wait_staged(disk, committer, 32)
    assert outcomes == {}  # nobody acknowledged while the sync is still running
    disk.release.set()
    for thread in first + rest:
        thread.join(30)

    assert outcomes == {i: "durable" for i in range(33)}
    assert disk.batches == [[0], list(range(1, 33))]  # 33 commits, 2 syncs
    assert (committer.commits, committer.syncs) == (33, 2)


def test_a_failed_sync_fails_exactly_the_commits_it_covered() -> None:
    disk = FakeDisk(fail_batch=1)
    committer = GroupCommit(disk.close, disk.sync)
    outcomes: dict[int, str] = {}

    first = run_commits(disk, committer, range(1), outcomes)
    assert disk.syncing.wait(30)
    second = run_commits(disk, committer, range(1, 9), outcomes)
    wait_staged(disk, committer, 8)
    disk.release.set()
    for thread in first + second:
        thread.join(30)
    later = run_commits(disk, committer, range(9, 12), outcomes)  # after the failure
    for thread in later:
        thread.join(30)

    assert {i for i, o in outcomes.items() if o == f"error {errno.EIO}"} == set(range(1, 9))
    assert {i for i, o in outcomes.items() if o == "durable"} == {0, 9, 10, 11}
    assert committer.commits == 4


def test_a_failing_stage_joins_no_batch() -> None:
    disk = FakeDisk()
    disk.release.set()
    committer = GroupCommit(disk.close, disk.sync)

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        committer.commit(full)
    assert caught.value.errno == errno.ENOSPC
    assert disk.batches == []
    committer.commit(lambda: disk.staged.append(1))
    assert disk.batches == [[1]]


def test_a_sync_that_raises_something_else_still_settles_its_batch() -> None:
    def broken(_: object) -> None:
        raise RuntimeError("bug in the sync")

    committer: GroupCommit[None] = GroupCommit(lambda: None, broken)

    with pytest.raises(OSError, match="bug in the sync"):
        committer.commit(lambda: None)
    with pytest.raises(OSError):  # the next batch is led again, nobody hangs
        committer.commit(lambda: None)


def test_a_staged_record_waits_for_the_sync_that_covers_it_whoever_leads() -> None:
    """stage() then wait(): the acceptor's split commit (the broker hears of the job in
    between). Another committer may lead the sync of the staged record meanwhile."""
    disk = FakeDisk()
    committer = GroupCommit(disk.close, disk.sync)
    outcomes: dict[int, str] = {}

    ticket = committer.stage(lambda: disk.staged.append(0))
    assert disk.batches == []  # staged is not durable
    other = run_commits(disk, committer, range(1, 2), outcomes)  # leads [0, 1]
    assert disk.syncing.wait(30)
    waiter = threading.Thread(target=committer.wait, args=(ticket,))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # its batch is still syncing
    disk.release.set()
    waiter.join(30)
    for thread in other:
        thread.join(30)

    assert disk.batches == [[0, 1]] and disk.durable == {0, 1}
    committer.wait(ticket)  # a settled ticket returns at once
    late = committer.stage(lambda: disk.staged.append(2))
    committer.wait(late)  # nobody else is committing: the waiter leads its own sync
    assert disk.batches == [[0, 1], [2]]
