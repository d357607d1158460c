"""Settled jobs leave the spool from the reaper's thread, all of them by close()."""

from __future__ import annotations

from pathlib import Path

from router.broker.reaper import SpoolReaper
from router.core.spool import Spool

from .helpers import make_header
from .test_spool import commit


def test_close_finishes_every_removal_asked_for(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").create()
    jobs = []
    for i in range(20):
        header = make_header(f"job{i}")
        commit(spool, header)
        jobs.append(header)
    reaper = SpoolReaper(spool)
    for header in jobs:
        reaper.remove(header)
    reaper.close()
    assert list(spool.jobs.iterdir()) == []


def test_a_removal_that_fails_is_counted_and_leaves_the_job_whole(tmp_path: Path) -> None:
    """EISDIR, EACCES or EIO on an unlink: the reaper thread goes on with the next job, and
    the job stays whole on the spool for the next start's recovery."""
    from router.core import metrics

    spool = Spool(tmp_path / "spool").create()
    broken, fine = make_header("job-broken"), make_header("job-fine")
    commit(spool, broken)
    commit(spool, fine)
    instance = spool.instance_path("job-broken")
    instance.unlink()
    instance.mkdir()  # a directory where the instance should be
    before = metrics.SPOOL_ERRORS.labels("remove")._value.get()
    reaper = SpoolReaper(spool)
    reaper.remove(broken)
    reaper.remove(fine)
    reaper.close()
    assert metrics.SPOOL_ERRORS.labels("remove")._value.get() == before + 1
    assert not reaper.removing("job-broken")
    assert [p.name for p in spool.jobs.iterdir()] == ["job-broken.dcm"]  # its header: the journal
