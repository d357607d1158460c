"""Results of a benchmark run: JSON, a markdown table with the machine, a PNG chart."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

CASE_ORDER = ["direct", "durable-receiver", "naive", "orthanc", "router", "router-tuned",
              "direct-1assoc", "router-1assoc", "router-acceptors-1", "router-acceptors-2"]

# Issue 13's targets. (size, senders or None for "every count measured", minimum ratio to
# direct, minimum fraction of the disk's durable bandwidth or None): a row meets its target
# when it reaches either minimum (0.5 MB x4: 0.3 of direct or 0.8 of the disk, "whichever is
# lower"; 50 MB: the disk alone).
RATIO_TARGETS: list[tuple[str, int | None, float | None, float | None]] = [
    ("10k", 1, 0.5, None), ("10k", 4, 0.25, None), ("10k", 16, 0.25, None),
    ("0.5m", 1, 0.5, None), ("0.5m", 4, 0.3, 0.8), ("50m", None, None, 0.7),
]
NAIVE_FACTOR = 3.0
CPU_MS_PER_10K_INSTANCE = 1.5
IDLE_RSS_LIMIT_MB = 300
PEAK_RSS_LIMIT_MB = 400


def _first_line(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip():
            return line.strip().lstrip("$").strip()
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_ram_gib(), 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": sys.version.split()[0],
        "dcmtk": _first_line(["storescu", "--version"]),
        "orthanc": _first_line(["Orthanc", "--version"]),
        "dicom_router": _version("dicom-router"),
        "pynetdicom": _version("pynetdicom"),
    }


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.M)
    return match.group(1) if match else platform.system()


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _sort_key(r: dict[str, Any], sizes: list[str]) -> tuple[Any, ...]:
    case = CASE_ORDER.index(r["case"]) if r["case"] in CASE_ORDER else 99
    return (sizes.index(r["size"]) if r["size"] in sizes else 99, r["transport"],
            r["senders"], case)


def table(results: list[dict[str, Any]], sizes: list[str]) -> str:
    head = ("| size | senders | transport | case | n | inst/s | MB/s | x direct | x disk "
            "| p50 ms | p99 ms | e2e s | CPU s/GB | CPU ms/inst | peak RSS MB | peak PSS MB "
            "| note |")
    lines = [head, "|" + "---|" * 17]
    for r in sorted(results, key=lambda r: _sort_key(r, sizes)):
        note = "" if r["status"] == "ok" else f"{r['status']}: {r.get('note', '')}"
        if r["status"] == "ok" and r.get("note"):
            note = r["note"]
        ratio, disk = r.get("ratio_direct"), r.get("ratio_disk")
        lines.append(
            f"| {r['size_label']} | {r['senders']} | {r['transport']} | {r['case']} "
            f"| {r['count']} | {_fmt(r.get('inst_per_s'))} | {_fmt(r.get('mb_per_s'))} "
            f"| {'-' if ratio is None else f'{ratio:.2f}'} "
            f"| {'-' if disk is None else f'{disk:.2f}'} "
            f"| {_fmt(r.get('lat_p50_ms'), 2)} | {_fmt(r.get('lat_p99_ms'), 2)} "
            f"| {_fmt(r.get('e2e_s'), 2)} | {_fmt(r.get('cpu_s_per_gb'))} "
            f"| {_fmt(r.get('cpu_ms_per_inst'), 2)} "
            f"| {_fmt(r.get('peak_rss_mb'))} | {_fmt(r.get('peak_pss_mb'))} "
            f"| {note.replace('|', '/')[:120]} |"
        )
    return "\n".join(lines)


def _lookup(results: list[dict[str, Any]], **key: Any) -> list[dict[str, Any]]:
    return [r for r in results if r["status"] == "ok"
            and all(r.get(k) == v for k, v in key.items())]


def targets(results: list[dict[str, Any]], case: str = "router",
            idle: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's targets, checked on one router case against the same run's baselines."""
    checks: list[dict[str, Any]] = []
    for size, senders, to_direct, to_disk in RATIO_TARGETS:
        rows = _lookup(results, case=case, size=size, transport="plain")
        if senders is not None:
            rows = [r for r in rows if r["senders"] == senders]
        for r in rows:
            wanted, values, met = [], [], []
            floor = _lookup(results, case=FLOOR_CASE, size=r["size"], senders=r["senders"],
                            transport="plain")
            for key, minimum, what in (("ratio_direct", to_direct, "direct"),
                                       ("ratio_disk", to_disk, "the disk")):
                if minimum is None:
                    continue
                wanted.append(f">= {minimum} x {what}")
                value = r.get(key)
                values.append("-" if value is None else f"{value:.2f}")
                if value is not None and floor and floor[0].get(key) is not None:
                    values[-1] += f" (floor {floor[0][key]:.2f})"
                met.append(None if value is None else value >= minimum)
            known = [m for m in met if m is not None]
            checks.append({
                "target": f"{r['size_label']}, {r['senders']} senders: {' or '.join(wanted)}",
                "value": " / ".join(values),
                "ok": any(known) if known else None,
            })
    for r in _lookup(results, case=case, size="10k", transport="plain"):
        checks.append({
            "target": f"CPU per 10 KB instance, {r['senders']} senders (all router "
                      f"processes): <= {CPU_MS_PER_10K_INSTANCE} ms",
            "value": r.get("cpu_ms_per_inst"),
            "ok": None if r.get("cpu_ms_per_inst") is None
            else r["cpu_ms_per_inst"] <= CPU_MS_PER_10K_INSTANCE,
        })
    if idle is not None:
        checks.append({
            "target": f"idle RSS of the default config, summed: <= {IDLE_RSS_LIMIT_MB} MB",
            "value": idle["total_mb"],
            "ok": idle["total_mb"] <= IDLE_RSS_LIMIT_MB,
        })
    for r in _lookup(results, case=case, transport="plain"):
        for other, factor in (("naive", NAIVE_FACTOR), ("orthanc", 1.0)):
            peer = _lookup(results, case=other, size=r["size"], senders=r["senders"],
                           transport="plain")
            if not peer or not peer[0].get("inst_per_s"):
                continue
            ratio = r["inst_per_s"] / peer[0]["inst_per_s"]
            checks.append({
                "target": f"{r['size_label']}, {r['senders']} senders: >= {factor:g} x {other}",
                "value": round(ratio, 2),
                "ok": ratio >= factor,
            })
    for r in _lookup(results, case=case, size="50m", senders=16):
        checks.append({
            "target": f"peak RSS, 16 senders of 50 MB ({r['transport']}): < "
                      f"{PEAK_RSS_LIMIT_MB} MB",
            "value": r.get("peak_rss_mb"),
            "ok": r.get("peak_rss_mb") is not None and r["peak_rss_mb"] < PEAK_RSS_LIMIT_MB,
        })
    return checks


FLOOR_CASE = "durable-receiver"


def floor_md(results: list[dict[str, Any]], case: str = "router") -> str:
    """Each row's durable floor against direct, and `case` against that floor: its rate and
    its CPU per instance (the host's speed moves both; their ratio to the floor much less)."""
    lines = []
    for f in sorted(_lookup(results, case=FLOOR_CASE, transport="plain"),
                    key=lambda r: (r["bytes"] / r["count"], r["senders"])):
        mine = _lookup(results, case=case, size=f["size"], senders=f["senders"],
                       transport="plain")
        rate = cpu = "-"
        if mine and f.get("inst_per_s"):
            rate = f"{mine[0]['inst_per_s'] / f['inst_per_s']:.2f}"
        if mine and mine[0].get("cpu_ms_per_inst") and f.get("cpu_ms_per_inst"):
            cpu = f"{mine[0]['cpu_ms_per_inst'] / f['cpu_ms_per_inst']:.1f}"
        lines.append(f"| {f['size_label']} | {f['senders']} | {_fmt(f.get('ratio_direct'), 2)} "
                     f"| {_fmt(f.get('ratio_disk'), 2)} | {_fmt(f.get('cpu_ms_per_inst'), 2)} "
                     f"| {rate} | {cpu} |")
    if not lines:
        return ""
    return "\n".join([
        f"The durable floor (`{FLOOR_CASE}`: a minimal receiver on the router's engine that "
        "fsyncs each instance and forwards nothing, the least any receiver does before it may "
        "answer Success under the ack rule). A target above the floor's own ratio (to direct "
        "or to the disk) is out of reach in that run for anything that syncs each instance on "
        "these cores; the targets table shows the floor beside each such ratio. "
        f"`{case}` does all that the floor does, then journals, queues and delivers (a second "
        "DICOM exchange):", "",
        f"| size | senders | floor x direct | floor x disk | floor CPU ms/inst "
        f"| {case} x floor | {case} CPU x floor's |", "|---|---|---|---|---|---|---|",
        *lines])


SINGLE_ASSOCIATION_RATIO = 0.5


def single_association_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The router in front of a destination that serves one association at a time, against
    storescu sending straight to it, with 1 and 4 senders."""
    checks: list[dict[str, Any]] = []
    for r in _lookup(results, case="router-1assoc", transport="plain"):
        if r["senders"] not in (1, 4):
            continue
        ratio = r.get("ratio_direct")
        value: Any = None if ratio is None else round(ratio, 2)
        key = {"size": r["size"], "senders": r["senders"], "transport": "plain"}
        floor = _lookup(results, case=FLOOR_CASE, **key)
        base = _lookup(results, case="direct-1assoc", **key)
        if value is not None and floor and base and base[0].get("inst_per_s"):
            # The floor against the same baseline as the target (it serves every sender).
            value = f"{value:.2f} (floor {floor[0]['inst_per_s'] / base[0]['inst_per_s']:.2f})"
        checks.append({
            "target": f"{r['size_label']}, {r['senders']} senders, one-association "
                      f"destination: >= {SINGLE_ASSOCIATION_RATIO} x direct-1assoc",
            "value": value,
            "ok": None if ratio is None else ratio >= SINGLE_ASSOCIATION_RATIO,
        })
    return checks


def _targets_md(checks: list[dict[str, Any]], case: str) -> str:
    if not checks:
        return f"No targets could be checked for `{case}` (missing cases or sizes)."
    lines = [f"Targets for `{case}` (plain; ratios against the same run):", "",
             "| target | measured | met |", "|---|---|---|"]
    for c in checks:
        met = "n/a" if c["ok"] is None else ("yes" if c["ok"] else "**no**")
        lines.append(f"| {c['target']} | {_fmt(c['value'], 2)} | {met} |")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    sizes = doc["settings"]["sizes"]
    parts = [
        f"# dicom-router benchmark, {doc['started']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, "
        f"kernel {m['kernel']}; Python {m['python']}, pynetdicom {m['pynetdicom']}, "
        f"dicom-router {m['dicom_router']}; {m['dcmtk']}; {m['orthanc']}.",
        "",
        f"Command: `{doc['settings']['command']}`  ",
        "Instances per size (direct/relayed cases): "
        + ", ".join(f"{k}: {v}" for k, v in doc["settings"]["counts"].items())
        + f"; transfer syntaxes: {'mixed' if doc['settings']['mixed'] else 'Explicit VR LE'}"
        + f"; repeats: {doc['settings']['repeat']} (median shown)"
        + ("; DCMTK peers with their own defaults (Nagle on)."
           if doc["settings"].get("dcmtk_defaults") else "; DCMTK peers with TCP_NODELAY=1."),
        "",
        "inst/s and MB/s: instances delivered to the destination per second, first C-STORE "
        "request to the last file complete at the destination. x direct: that rate over "
        "direct DCMTK's in the same size/senders/transport. p50/p99: sender-side C-STORE "
        "latency (storescu request to response). CPU s/GB and peak RSS: the router's "
        "processes (all of them), CPU over the measured span; RSS is summed over the "
        "processes (shared pages count once per process), PSS shares them out.",
        "",
        table(doc["results"], sizes),
        "",
    ]
    disk = doc.get("disk") or {}
    if disk:
        parts += ["Durable write bandwidth of the spool disk (fsync'd writes of each size, "
                  "one at a time, measured before each round, the median taken; `x disk` is "
                  "a row's rate over it): " + ", ".join(
                      f"{s}: {d['inst_per_s']:,.0f}/s, {d['mb_per_s']:,.0f} MB/s"
                      + _measures(d) for s, d in disk.items()) + ".", ""]
    idle = doc.get("idle")
    if idle:
        parts += [f"Idle RSS of the default config: {idle['total_mb']:.0f} MB summed ("
                  + ", ".join(f"{k} {v:.0f}" for k, v in idle["processes"].items()) + ").", ""]
    for case in ("router", "router-tuned", "router-1assoc"):
        if any(r["case"] == case for r in doc["results"]):
            parts += [_targets_md(doc["targets"].get(case, []), case), ""]
    relays = [c for c in ("router", "router-1assoc") if any(r["case"] == c
                                                          for r in doc["results"])]
    floor = floor_md(doc["results"], relays[0]) if relays else ""
    if floor:
        parts += [floor, ""]
    parts += ["Cases: " + "; ".join(f"`{k}`: {v}" for k, v in doc["cases"].items()), ""]
    return "\n".join(parts)


def write(doc: dict[str, Any], out: Path) -> Path:
    """results.json, results.md, chart.png in out/<timestamp>/, and out/latest.md."""
    from loadtest.chart import chart  # it reads CASE_ORDER from here

    return write_run(doc, out, "", "results", markdown(doc), lambda path: chart(doc, path),
                     "latest.md", image="chart")


def write_run(doc: dict[str, Any], out: Path, prefix: str, stem: str, text: str,
              draw: Callable[[Path], bool], latest: str, image: str) -> Path:
    """One run's folder out/<prefix><timestamp>/ with <stem>.json, <stem>.md and <image>.png
    (when it could be drawn), and out/<latest> pointing at that folder's picture."""
    folder = out / (prefix + doc["started"].replace(":", "").replace(" ", "_"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    if draw(folder / f"{image}.png"):
        text += f"\n![{image}]({image}.png)\n"
    (folder / f"{stem}.md").write_text(text)
    (out / latest).write_text(text.replace(f"]({image}.png)", f"]({folder.name}/{image}.png)"))
    return folder


def _measures(disk: dict[str, Any]) -> str:
    """Every round's measure, when there were several (a run before 2026-12-06 16:10 had one)."""
    measures = disk.get("measures_mb_per_s") or []
    if len(measures) < 2:
        return ""
    return " (measures: " + " / ".join(f"{m:,.0f}" for m in measures) + " MB/s)"
