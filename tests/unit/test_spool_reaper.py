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
