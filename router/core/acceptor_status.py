"""Reading the acceptors' live snapshots out of /status: one per acceptor process
(acceptor-1 ... acceptor-N, router/core/status_snapshots.py). No imports: the command line
and the console use it without loading the metrics."""

from __future__ import annotations

from typing import Any


def acceptor_snapshots(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The acceptors' snapshots in /status (acceptor-1 ... acceptor-N), by name."""
    return {name: body for name, body in status.items()
            if name.startswith("acceptor-") and isinstance(body, dict)}


def open_associations(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Every acceptor's open associations, each marked with its acceptor, oldest first."""
    rows = [{**row, "acceptor": name}
            for name, body in acceptor_snapshots(status).items()
            for row in body.get("associations", [])]
    return sorted(rows, key=lambda r: float(r.get("started_at", 0)))

