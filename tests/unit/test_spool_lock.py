"""The children's lock on a spool (router/core/spool_lock.py): what a starting supervisor
waits for, and what it tells the operator when it waits in vain."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from router.core.spool_lock import (
    CHILDREN_LOCK_NAME,
    SpoolInUse,
    Tenancy,
    await_old_children,
    join_spool,
)


def _share(path: Path) -> subprocess.Popen[bytes]:
    """Another process holding a shared lock on `path`, as a child of an old router does."""
    holder = subprocess.Popen(["flock", "-s", "-o", str(path), "sleep", "30"],
                              start_new_session=True)
    deadline = time.monotonic() + 10
    while f" {holder.pid} " not in Path("/proc/locks").read_text():
        assert time.monotonic() < deadline, "flock never took its lock"
        time.sleep(0.02)
    return holder


def test_an_old_child_past_the_bound_is_an_operator_message_naming_it(tmp_path: Path) -> None:
    holder = _share(tmp_path / CHILDREN_LOCK_NAME)
    try:
        with pytest.raises(SpoolInUse) as raised:
            await_old_children(tmp_path, 0.3, threading.Event())
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert f"pids {holder.pid}" in str(raised.value)
    assert f"kill {holder.pid}" in str(raised.value)


def test_the_wait_ends_when_the_old_child_leaves(tmp_path: Path) -> None:
    holder = _share(tmp_path / CHILDREN_LOCK_NAME)
    threading.Timer(0.3, holder.kill).start()
    try:
        assert await_old_children(tmp_path, 30, threading.Event())
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_a_child_whose_supervisor_is_gone_does_not_join(tmp_path: Path) -> None:
    assert join_spool(Tenancy(tmp_path, os.getppid() + 1)) is None
    fd = join_spool(Tenancy(tmp_path, os.getppid()))
    assert fd is not None
    os.close(fd)
