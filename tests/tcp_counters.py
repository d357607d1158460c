"""Linux's TCP counters, for tests about how the router acknowledges what it receives."""

from __future__ import annotations

from pathlib import Path


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
