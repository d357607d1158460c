"""The first start on a spool volume that is already full: the router's lock file cannot
take its pid. The operator must read which spool and file, and what to do, not a bare
"No space left on device". A real small tmpfs (needs root to mount it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from router.core.spool_lock import LOCK_NAME, SpoolUnwritable, hold_spool
from tests.integration.conftest import fill_disk

pytestmark = pytest.mark.integration


def test_a_full_volume_names_the_spool_and_the_lock_file(
    small_tmpfs: Callable[[str], Path]
) -> None:
    volume = small_tmpfs("size=64k")
    fill_disk(volume / "filler")
    with pytest.raises(SpoolUnwritable) as refused:
        hold_spool(volume, 95.0)
    message = str(refused.value)
    assert str(volume) in message and LOCK_NAME in message, message
    assert "free space" in message, message


def test_the_pid_is_written_over_an_older_and_longer_one(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("4194304\n123456.5\nleft by hand\n")
    fd, previous = hold_spool(tmp_path, 95.0)
    try:
        assert previous == 123456.5
        pid, grace = (tmp_path / LOCK_NAME).read_text().split("\n", 1)
        assert int(pid) > 0 and grace == "95.0\n"
    finally:
        os.close(fd)
