"""Soak mode: the router at a fixed rate for N minutes, RSS and queue depth sampled.

Every second a new storescu sends ``rate`` instances in one association (several may
overlap when the router is slow). Each instance is a copy of a generated template with
a fresh SOP Instance UID of the same length patched into its bytes, so every instance
is new to the router (its duplicate ledger and spool see a real stream, not repeats).
Received files are deleted at the destination as the soak goes, so disk use stays flat.

Writes soak.json, soak.md and soak.png into <out>/soak-<timestamp>/ and <out>/latest-soak.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from loadtest import report
from loadtest.data import SIZES, dataset
from loadtest.peers import _LOG_CONFIG, PDU, SenderRun, parse_storescu_log
from loadtest.procwatch import ProcessWatch
from loadtest.targets import CASES, CaseEnv, delivered, scrape
from tests.dcmtk import LOCALHOST, _association_config, dcmtk_env

WARMUP_S = 60.0  # RSS before this is start-up, not drift


class Batches:
    """Writes uniquely-UIDed copies of the templates and sends each batch with storescu."""

    def __init__(self, templates: list[Path], contexts: list[tuple[str, str]], work: Path,
                 port: int, called_ae: str) -> None:
        self.templates = [(p.stem, p.read_bytes()) for p in templates]
        self.work, self.port, self.called_ae = work, port, called_ae
        self.config = work / "storescu.cfg"
        self.config.write_text(_association_config(contexts))
        self.log_config = work / "log.cfg"
        self.log_config.write_text(_LOG_CONFIG)
        self.counter = 0
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.senders = SenderRun()

    def _copy(self, folder: Path) -> None:
        uid, data = self.templates[self.counter % len(self.templates)]
        self.counter += 1
        fresh = uid[:-12] + f"{self.counter:012d}"
        # A same-length UID keeps every element length (and the meta group length) valid.
        (folder / f"{fresh}.dcm").write_bytes(data.replace(uid.encode(), fresh.encode()))

    def launch(self, count: int) -> None:
        folder = self.work / f"batch-{self.counter}"
        folder.mkdir()
        for _ in range(count):
            self._copy(folder)
        command = ["storescu", "-xf", str(self.config), "AsIs", "-lc", str(self.log_config),
                   "-aet", "SOAK", "-aec", self.called_ae, "-pdu", str(PDU), "-nh",
                   "+sd", LOCALHOST, str(self.port), str(folder)]
        log = (folder.parent / f"{folder.name}.log").open("wb")
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=dcmtk_env())
        log.close()
        self.running.append((proc, folder))

    def reap(self, wait: bool = False) -> int:
        """Collect finished senders; returns how many are still running."""
        still = []
        for proc, folder in self.running:
            if wait:
                proc.wait(timeout=300)
            if proc.poll() is None:
                still.append((proc, folder))
                continue
            log = folder.parent / f"{folder.name}.log"
            parse_storescu_log(log.read_text(errors="replace"), self.senders)
            if proc.returncode != 0:
                self.senders.errors.append(f"{folder.name}: exit {proc.returncode}")
            shutil.rmtree(folder, ignore_errors=True)
            log.unlink(missing_ok=True)
        self.running = still
        return len(still)


def _clear_destination(folder: Path, older_than: float) -> None:
    now = time.time()
    for entry in folder.glob("*"):
        try:
            if now - entry.stat().st_mtime > older_than:
                entry.unlink()
        except OSError:
            pass


def _slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / var * 60


def soak(args: argparse.Namespace) -> int:
    size = SIZES[args.soak_size]
    rate = max(1, round(args.rate))
    seconds = args.soak * 60
    work = args.work_dir / "soak"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pool = dataset(args.work_dir / "data", size, max(20, rate * 2))
    env = CaseEnv(work / "case", work / "case" / "dest", None)
    env.workdir.mkdir(parents=True)
    (work / "send").mkdir()
    timeline: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"soak: {args.soak_case}, {rate} x {size.label} per second for {args.soak} min")
    with CASES[args.soak_case][1](env) as endpoint:
        assert endpoint.pid is not None and endpoint.metrics_url is not None
        watch = ProcessWatch(endpoint.pid, interval=1.0).start()
        batches = Batches(pool.files, pool.contexts, work / "send", endpoint.port,
                          endpoint.called_ae)
        t0 = time.monotonic()
        tick = 0
        while time.monotonic() - t0 < seconds:
            batches.launch(rate)
            tick += 1
            overlapping = batches.reap()
            _sample(timeline, t0, watch, endpoint.metrics_url, batches, overlapping)
            if tick % 10 == 0:
                _clear_destination(env.dest_dir, 10)
                last = timeline[-1]
                print(f"  {last['t']:6.0f} s  RSS {last['rss_mb']:6.0f} MB  PSS "
                      f"{last['pss_mb']:6.0f} MB  queued {last['queued']:5.0f}  "
                      f"delivered {last['delivered']:7.0f}/{batches.counter}", flush=True)
            time.sleep(max(0.0, t0 + tick - time.monotonic()))
        batches.reap(wait=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            _sample(timeline, t0, watch, endpoint.metrics_url, batches, 0)
            if timeline[-1]["delivered"] >= batches.senders.sent - batches.senders.failures:
                break
            _clear_destination(env.dest_dir, 10)
            time.sleep(1)
        watch.stop()
    doc = _summary(started, args, size.label, rate, timeline, batches)
    folder = report.write_run(doc, args.out, "soak-", "soak", _markdown(doc),
                              lambda path: _chart(doc, path), "latest-soak.md", image="soak")
    print((folder / "soak.md").read_text())
    shutil.rmtree(work, ignore_errors=True)
    return 0 if not batches.senders.errors else 1


def _sample(timeline: list[dict[str, Any]], t0: float, watch: ProcessWatch, url: str,
            batches: Batches, overlapping: int) -> None:
    try:
        metrics = scrape(url)
    except OSError:
        metrics = {}
    queued = sum(v for k, v in metrics.items() if k.startswith("dicom_router_jobs_queued"))
    rss, pss = watch.samples[-1][1] if watch.samples else 0, watch.last_pss
    timeline.append({
        "t": round(time.monotonic() - t0, 1), "rss_mb": rss / 1e6, "pss_mb": pss / 1e6,
        "queued": queued, "delivered": delivered(metrics), "sent": batches.counter,
        "senders_running": overlapping,
    })


def _summary(started: str, args: argparse.Namespace, size: str, rate: int,
             timeline: list[dict[str, Any]], batches: Batches) -> dict[str, Any]:
    steady = [p for p in timeline if p["t"] >= min(WARMUP_S, args.soak * 60 / 2)]
    lat = sorted(batches.senders.latencies)
    return {
        "started": started, "machine": report.machine(), "case": args.soak_case,
        "size": size, "rate": rate, "minutes": args.soak,
        "instances_sent": batches.senders.sent, "failures": batches.senders.failures,
        "errors": batches.senders.errors[:20],
        "delivered": timeline[-1]["delivered"] if timeline else 0,
        "rss_mb_after_warmup": steady[0]["rss_mb"] if steady else None,
        "rss_mb_peak": max((p["rss_mb"] for p in timeline), default=None),
        "rss_mb_end": timeline[-1]["rss_mb"] if timeline else None,
        "rss_slope_mb_per_min": _slope_mb_per_min([(p["t"], p["rss_mb"]) for p in steady]),
        "pss_slope_mb_per_min": _slope_mb_per_min([(p["t"], p["pss_mb"]) for p in steady]),
        "queued_peak": max((p["queued"] for p in timeline), default=None),
        "lat_p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
        "lat_p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "timeline": timeline,
    }


def _markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]

    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

    rows = [("instances sent / delivered", f"{doc['instances_sent']} / {f(doc['delivered'])}"),
            ("failed C-STOREs", doc["failures"]),
            ("RSS after warm-up / peak / end (MB)",
             f"{f(doc['rss_mb_after_warmup'])} / {f(doc['rss_mb_peak'])} / {f(doc['rss_mb_end'])}"),
            ("RSS slope after warm-up (MB/min)", f(doc["rss_slope_mb_per_min"])),
            ("PSS slope after warm-up (MB/min)", f(doc["pss_slope_mb_per_min"])),
            ("peak queue depth (jobs)", f(doc["queued_peak"])),
            ("sender latency p50 / p99 (ms)", f"{f(doc['lat_p50_ms'])} / {f(doc['lat_p99_ms'])}")]
    return "\n".join([
        f"# dicom-router soak, {doc['started']}", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, kernel "
        f"{m['kernel']}, Python {m['python']}.", "",
        f"`{doc['case']}`: {doc['rate']} x {doc['size']} per second for {doc['minutes']} min "
        "(RSS and PSS summed over the router's processes, sampled every second).", "",
        "| measure | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows], ""])


def _chart(doc: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [p["t"] / 60 for p in doc["timeline"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [p["rss_mb"] for p in doc["timeline"]], label="RSS (sum)", color="#1f77b4")
    ax.plot(t, [p["pss_mb"] for p in doc["timeline"]], label="PSS (sum)", color="#2ca02c")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(t, [p["queued"] for p in doc["timeline"]], label="jobs queued", color="#d62728",
             alpha=0.6)
    ax2.set_ylabel("jobs queued")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    ax.set_title(f"{doc['case']}: {doc['rate']} x {doc['size']}/s for {doc['minutes']} min")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
