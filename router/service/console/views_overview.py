"""The overview (filled in by console.js from overview.json every two seconds) and the
destinations page with its actions."""

from __future__ import annotations

import re
import time
from typing import Any

from router.core.acceptor_status import open_associations
from router.service.console.auth import Identity
from router.service.console.history import History
from router.service.console.html import age, button, e, form, page, select, table
from router.service.destination_state import state
from router.service.http_types import Response
from router.service.metric_samples import Samples, total

HTML = "text/html; charset=utf-8"
_ACTION = re.compile(r"/console/destinations/([A-Za-z0-9_-]{1,64})/(pause|resume|retry|drain)")


def overview(identity: Identity, message: str) -> Response:
    body = """
<section id="summary" class="cards" aria-live="polite"></section>
<h2>Associations in progress</h2>
<p class="note">A DICOM sender does not announce an instance's size: the bar moves while
bytes arrive and the figure is what has arrived.</p>
<div id="associations"></div>
<h2>Destinations</h2>
<div id="destinations"></div>
<h2>Last hour</h2>
<div class="charts">
  <figure><figcaption>Instances per second (in, out)</figcaption>
    <svg id="chart-rate" viewBox="0 0 600 160" role="img" aria-label="throughput"></svg>
  </figure>
  <figure><figcaption>Jobs queued</figcaption>
    <svg id="chart-queue" viewBox="0 0 600 160" role="img" aria-label="queue"></svg>
  </figure>
</div>"""
    return Response(200, page("Overview", body, identity, message, script=True), HTML)


def overview_data(status: dict[str, Any], samples: Samples, history: History
                  ) -> dict[str, Any]:
    broker = status.get("broker", {})
    rates = history.rate_by_destination()
    rows = []
    for name, row in sorted(broker.get("destinations", {}).items()):
        rows.append({
            "name": name, "state": state(row), "paused": bool(row.get("paused")),
            "concurrency": row.get("concurrency"), "associations": row.get("associations"),
            "depth": row.get("depth", 0), "in_flight": row.get("in_flight", 0),
            "oldest": age(row.get("oldest_seconds", 0)) if row.get("depth") else "-",
            "rate": round(rates.get(name, 0.0), 2),
            "delivered": _count(samples, name, "delivered"),
            "failed": _count(samples, name, "failed"),
            "dead_letters": int(row.get("dead_letters_waiting", 0)),  # to replay, now
        })
    return {
        "ready": status.get("ready"), "ready_reason": status.get("ready_reason"),
        "started_at": status.get("started_at"), "version": status.get("version"),
        "jobs_queued": broker.get("jobs_queued", 0), "spool": broker.get("spool", {}),
        "associations": open_associations(status),
        "destinations": rows, "history": history.series(),
    }


def _count(samples: Samples, name: str, result: str) -> int:
    return int(total(samples, "dicom_router_instances_forwarded_total", destination=name,
                     result=result))


def destinations(identity: Identity, status: dict[str, Any], names: list[str],
                 message: str) -> Response:
    rows = status.get("broker", {}).get("destinations", {})
    out = []
    for name, row in sorted(rows.items()):
        assoc = f"{row.get('associations', 0)}/{row['concurrency']}" \
            if "concurrency" in row else "-"
        out.append([e(name), f'<span class="state">{e(state(row))}</span>', e(assoc),
                    e(row.get("depth", 0)), e(row.get("in_flight", 0)),
                    _actions(identity, name, row, names)])
    body = _stale_banner(status.get("broker", {})) + table(
        ["Destination", "State", "Associations", "Queued", "In flight", "Actions"],
        out, "destinations")
    if not identity.can_act:
        body += '<p class="note">Your role is viewer: actions need the operator role.</p>'
    return Response(200, page("Destinations", body, identity, message, script=True), HTML)


def _stale_banner(broker: dict[str, Any]) -> str:
    """A hung or dead broker's last report must not pass for the current state."""
    if not broker:
        return '<p class="flash" role="alert">The broker has not reported yet (starting, ' \
            'hung or down): no destination state to show.</p>'
    if not broker.get("stale"):
        return ""
    since = age(time.time() - float(broker.get("updated", 0)))
    return (f'<p class="flash" role="alert">The broker has not reported for {e(since)} (hung '
            'or down): this is its last report, not the current state.</p>')


def _actions(identity: Identity, name: str, row: dict[str, Any], names: list[str]) -> str:
    if not identity.can_act:
        return ""
    base = f"/console/destinations/{name}"
    paused = bool(row.get("paused"))
    toggle = "resume" if paused else "pause"
    parts = [
        form(f"{base}/{toggle}", identity, button(toggle.capitalize()),
             confirm=f"{toggle.capitalize()} {name}?"),
        form(f"{base}/retry", identity, button("Retry now"), confirm=f"Retry {name} now?"),
    ]
    others = [n for n in names if n != name]
    if others:
        parts.append(form(f"{base}/drain", identity,
                          select("to", others, label="to") + button("Drain"),
                          confirm=f"Move everything queued for {name} to the chosen "
                                  "destination?"))
    return '<div class="actions">' + "".join(parts) + "</div>"


def api_call(path: str) -> tuple[str, str] | None:
    """A console action path -> (operator API path, page to go back to)."""
    match = _ACTION.fullmatch(path)
    if match is None:
        return None
    return f"/api/destinations/{match[1]}/{match[2]}", "/console/destinations"
