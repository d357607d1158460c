"""A spool out of inodes with bytes free: the recycle pool holds the inodes freed by
deliveries, so the acceptor must recover by itself once a commit failed, not only after a
restart. A real tmpfs with few inodes (needs root to mount it)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from router.acceptor.admission import SPOOL_RECHECK_SECONDS, Admission
from router.core.config import SpoolConfig
from router.core.disk_space import describe_oserror, full_spool_comment

pytestmark = pytest.mark.integration


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def fill_with_inodes(folder: Path) -> None:
    """Create files in `folder` until the filesystem has no inode left."""
    for i in range(1000):
        try:
            (folder / f"{i}.dcm").touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return
    pytest.fail("the tmpfs never ran out of inodes")


def test_a_pool_holding_every_inode_is_emptied_and_work_resumes(
    small_tmpfs: Callable[[str], Path]
) -> None:
    few_inodes = small_tmpfs("size=8m,nr_inodes=40")
    for folder in ("incoming", "jobs", "journal", "recycle"):
        (few_inodes / folder).mkdir()
    fill_with_inodes(few_inodes / "recycle")  # settled jobs' files, as the reaper pools them
    with pytest.raises(OSError) as full:
        (few_inodes / "jobs" / "j1.job").touch()
    assert "no free inodes" in describe_oserror(full.value, few_inodes)

    clock = Clock()
    admission = Admission(SpoolConfig(path=few_inodes, min_free_bytes=0, min_free_percent=0),
                          clock=clock)
    admission.spool_failed(describe_oserror(full.value, few_inodes))  # a commit failed
    refusal = admission.refusal()
    assert refusal is not None and refusal[0] in ("no_free_inodes", "spool_unwritable")
    assert "no free inodes" in refusal[1], refusal

    clock.now += SPOOL_RECHECK_SECONDS
    assert admission.refusal() is None
    assert list((few_inodes / "recycle").iterdir()) == []
    (few_inodes / "jobs" / "j1.job").touch()  # a commit has its inode again


def test_a_c_store_refused_for_inodes_says_so_to_its_sender(
        small_tmpfs: Callable[[str], Path]) -> None:
    """The 0xA700's comment said "spool disk full" whatever ran out: a sender's log pointed
    at `df -h`, which shows room. With the inodes gone it says inodes; with bytes gone, disk
    full, as before."""
    few_inodes = small_tmpfs("size=8m,nr_inodes=40")
    assert full_spool_comment(few_inodes) == "spool disk full; retry later"  # room left
    fill_with_inodes(few_inodes)
    assert full_spool_comment(few_inodes) == "spool out of inodes; retry later"
    assert full_spool_comment(few_inodes, receiving=True) == \
        "spool out of inodes while receiving; retry later"
