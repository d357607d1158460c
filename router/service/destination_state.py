"""A destination's state in words (paused, backing off, busy, held, fallback), from its row in
/status: what `dicom-router status`, `destinations list` and the console show."""

from __future__ import annotations

from typing import Any


def state(row: dict[str, Any]) -> str:
    """One destination's state in words, as `status` and the console show it."""
    parts = []
    if row.get("removed"):  # by a config reload: what is left of its queue dead-letters
        parts.append("removed by reload")
    if row.get("paused"):
        parts.append("paused by operator")
    if not row.get("up", True):
        why = str(row.get("backing_off_because") or "").split(":", 1)[0]
        parts.append(f"backing off {row.get('paused_for', 0):.0f}s"
                     + (f" ({why[:24]})" if why else ""))  # the reason label (README Retries)
    elif row.get("busy_for", 0) > 0:
        parts.append("busy")
    if row.get("waiting_for_spool"):  # its copies wait for room on the router's own disk
        why = str(row.get("spool_wait_because") or "").split(":", 1)[0]
        parts.append("waiting for the spool" + (f" ({why[:24]})" if why else ""))
    if not row.get("in_window", True):
        parts.append("held (window)")
    if row.get("fallback_to"):
        parts.append(f"fallback to {row['fallback_to']}")
    return ", ".join(parts) or "up"
