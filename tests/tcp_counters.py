"""Linux's TCP counters, for tests about how the router acknowledges what it receives."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


def delayed_acks() -> int | None:
    """ACKs the kernel sent late, when its delayed-ACK timer fired (TcpExt DelayedACKs):
    every socket of this network namespace counts. None where /proc/net/netstat is absent."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table["DelayedACKs"]) if "DelayedACKs" in table else None
    return None


def require_delayed_ack_counter() -> int:
    """The counter now. Without TCP_QUICKACK or the counter (not Linux) the test skips on a
    developer's machine; CI runs on Linux, so there it fails instead of passing unseen."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Another test on the other worker would move the counter too.
        pytest.fail("a test reading TcpExt DelayedACKs must be marked @pytest.mark.serial "
                    "(scripts/run-tests.sh runs those alone)")
    count = delayed_acks()
    if count is not None and hasattr(socket, "TCP_QUICKACK"):
        return count
    why = "needs Linux's TCP_QUICKACK and /proc/net/netstat (TcpExt DelayedACKs)"
    if os.environ.get("CI"):
        pytest.fail(f"{why}: CI must run this test, not skip it")
    pytest.skip(why)
