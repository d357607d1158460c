"""`dicom-router status`: one screen of what a running router does, from its HTTP port.

It reads GET /status (associations in progress, queues, processes) and GET /metrics (totals)
twice, `interval` apart, so rates are what happened between the two reads. Works over SSH on
an appliance (plain text when the output is no terminal) and needs nothing but the port.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from router.core.acceptor_status import acceptor_snapshots, open_associations
from router.core.errors import RouterError
from router.service import destination_state
from router.service.metric_samples import Samples, by_label, parse_metrics, total


class StatusUnavailable(RouterError):
    """The router's HTTP port did not answer: it is not running, or not on that address."""


def fetch(url: str, path: str, timeout: float = 5.0) -> bytes:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}{path}", timeout=timeout) as rsp:
            return bytes(rsp.read())
    except urllib.error.HTTPError as exc:
        raise StatusUnavailable(f"{url}{path} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusUnavailable(
            f"no router answers at {url} ({reason}); is it running, and is metrics.host/port "
            "in its config this address?") from None


@dataclass(frozen=True)
class Reading:
    status: dict[str, Any]
    samples: Samples
    at: float


def read(url: str) -> Reading:
    status = json.loads(fetch(url, "/status"))
    samples = parse_metrics(fetch(url, "/metrics").decode())
    return Reading(status, samples, time.monotonic())


# --- formatting --------------------------------------------------------------------------------

def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


# --- the screen --------------------------------------------------------------------------------

def render(before: Reading, now: Reading) -> RenderableType:
    elapsed = max(now.at - before.at, 1e-6)
    return Group(
        _header(now), _throughput(before, now, elapsed), _associations(now),
        _destinations(before, now, elapsed), _problems(now),
    )


def _header(now: Reading) -> Text:
    s = now.status
    state = Text("READY", style="bold green") if s.get("ready") else \
        Text(f"NOT READY: {s.get('ready_reason', '?')}", style="bold red")
    line = Text.assemble(
        (f"{s.get('ae_title', '?')} ", "bold"), f"on {s.get('listen', '?')}  ", state,
        f"  up {duration(time.time() - float(s.get('started_at', time.time())))}",
        f"  version {s.get('version', '?')}",
    )
    spool = now.status.get("broker", {}).get("spool", {})
    if spool.get("size_bytes"):
        line.append(f"\nspool: {size(spool['free_bytes'])} free of {size(spool['size_bytes'])}"
                    f", {size(spool.get('queued_bytes', 0))} queued in "
                    f"{now.status.get('broker', {}).get('jobs_queued', 0)} jobs")
    kept = int(now.status.get("commitment_results_kept", 0))
    if kept:
        line.append(f"\nstorage commitment results kept for their requester: {kept} (not "
                    "taken yet, sent again; the log says why)", style="yellow")
    processes = [f"{p['name']}{'' if p['alive'] else ' (DOWN)'}"
                 + (f" restarted {p['restarts']}x" if p["restarts"] else "")
                 for p in s.get("processes", [])]
    line.append(f"\nprocesses: {', '.join(processes)}")
    acceptors = acceptor_snapshots(s)
    if len(acceptors) > 1:
        line.append("\n" + ", ".join(f"{name}: {body.get('accepted', 0)} associations, "
                                      f"{body.get('stored', 0)} instances stored"
                                      for name, body in acceptors.items()))
    for name in (*acceptors, "broker"):
        if s.get(name, {}).get("stale"):
            line.append(f"\n{name} has not reported for a while: it may be hung", style="red")
    return line


def _rate(before: Reading, now: Reading, elapsed: float, name: str, **labels: str) -> float:
    delta = total(now.samples, name, **labels) - total(before.samples, name, **labels)
    return max(0.0, delta) / elapsed


def _throughput(before: Reading, now: Reading, elapsed: float) -> Text:
    def rate(name: str, **labels: str) -> float:
        return _rate(before, now, elapsed, name, **labels)

    received = rate("dicom_router_instances_received_total", result="accepted")
    forwarded = rate("dicom_router_instances_forwarded_total", result="delivered")
    return Text(
        f"in:  {received:7.1f} instances/s  {size(rate('dicom_router_received_bytes_total'))}/s"
        f"   (receiving now: {size(total(now.samples, 'dicom_router_receive_bytes_in_flight'))})"
        f"\nout: {forwarded:7.1f} instances/s  "
        f"{size(rate('dicom_router_forwarded_bytes_total'))}/s")


def _associations(now: Reading) -> Table:
    rows = open_associations(now.status)
    table = Table(title=f"Associations ({len(rows)} open)", title_justify="left", expand=False)
    for column in ("calling AE", "called AE", "peer", "TLS", "open for", "instances",
                   "received", "transfer now", "idle"):
        table.add_column(column, justify="right" if column in (
            "instances", "received", "transfer now") else "left")
    wall = time.time()
    for a in rows:
        # Text, not str: rich reads a str as markup, and a peer's AE title "[/]" is valid.
        table.add_row(Text(str(a["calling_ae"])), Text(str(a["called_ae"])), Text(str(a["peer"])),
                      "yes" if a["tls"] else "no",
                      duration(wall - a["started_at"]), str(a["instances"]),
                      size(a["bytes_received"]),
                      size(a["current_bytes"]) if a["current_bytes"] else "-",
                      duration(wall - a["last_activity"]))
    return table


def _destinations(before: Reading, now: Reading, elapsed: float) -> Table:
    rows = now.status.get("broker", {}).get("destinations", {})
    table = Table(title="Destinations", title_justify="left")
    for column in ("name", "state", "assoc", "queued", "in flight", "oldest", "delivered/s",
                   "delivered", "suppressed", "failed", "retries", "dead letters"):
        table.add_column(column, justify="left" if column in ("name", "state") else "right")
    samples = now.samples
    for name, d in sorted(rows.items()):
        state = Text(destination_state.state(d), style=_state_colour(d))
        table.add_row(
            Text(name), state, _associations_cell(d), str(d["depth"]), str(d["in_flight"]),
            duration(d["oldest_seconds"]) if d["depth"] or d["in_flight"] else "-",
            f"{_rate(before, now, elapsed, 'dicom_router_instances_forwarded_total', destination=name, result='delivered'):.1f}",  # noqa: E501
            f"{total(samples, 'dicom_router_instances_forwarded_total', destination=name, result='delivered'):.0f}",  # noqa: E501
            f"{total(samples, 'dicom_router_instances_forwarded_total', destination=name, result='suppressed'):.0f}",  # noqa: E501
            f"{total(samples, 'dicom_router_instances_forwarded_total', destination=name, result='failed'):.0f}",  # noqa: E501
            f"{total(samples, 'dicom_router_retries_total', destination=name):.0f}",
            str(d.get("dead_letters_waiting", 0)),  # on the spool now, not since start
        )
    return table


def _state_colour(row: dict[str, Any]) -> str:
    """The words are destination_state's (the same in `destinations list` and the console)."""
    if not row.get("up", True):
        return "red"
    if row.get("removed") or row.get("paused") or row.get("busy_for", 0) > 0 \
            or not row.get("in_window", True) or row.get("fallback_to"):
        return "yellow"
    return "green"


def _associations_cell(row: dict[str, Any]) -> str:
    """Open associations / the live limit (learned, or max_associations)."""
    if "concurrency" not in row:
        return "-"
    return f"{row.get('associations', 0)}/{row['concurrency']}"


PROBLEMS = (
    ("dicom_router_refusals_total", "reason", "refused (0xA700 / busy)"),
    ("dicom_router_association_rejections_total", "reason", "associations rejected"),
    ("dicom_router_connections_dropped_total", "reason", "connections dropped"),
    ("dicom_router_tls_handshake_failures_total", "reason", "TLS handshakes failed"),
    ("dicom_router_dead_letters_total", "reason", "dead letters"),
    ("dicom_router_process_restarts_total", "process", "process restarts"),
    ("dicom_router_config_reloads_total", "result", "config reloads"),
)


def _problems(now: Reading) -> Text:
    """Every non-zero error counter since the router started, by its reason."""
    lines = Text("Errors since start", style="bold")
    found = False
    for name, label, title in PROBLEMS:
        counts = {k: v for k, v in by_label(now.samples, name, label).items() if v}
        if name.endswith("config_reloads_total"):
            counts = {k: v for k, v in counts.items() if k == "rejected"}
        if counts:
            found = True
            detail = ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts.items()))
            lines.append(f"\n  {title}: {detail}")
    failed = {(dict(lbl)["status"], dict(lbl)["command"]): v
              for (n, lbl), v in now.samples.items()
              if n == "dicom_router_dimse_requests_total" and v and
              dict(lbl).get("status") not in ("0x0000",)}
    if failed:
        found = True
        detail = ", ".join(f"{c} {s} {v:.0f}" for (s, c), v in sorted(failed.items()))
        lines.append(f"\n  answered with a non-success status: {detail}")
    if not found:
        lines.append("\n  none")
    return lines
