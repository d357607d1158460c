"""The router's benchmark: one command, every case interleaved, table + JSON + chart.

    .venv/bin/python -m loadtest.bench                      # the full run (~30 min, 2 cores)
    .venv/bin/python -m loadtest.bench --quick              # a ~2 minute smoke run
    .venv/bin/python -m loadtest.bench --sizes 10k,0.5m --senders 1,4 --transports plain
    .venv/bin/python -m loadtest.bench --soak 10 --rate 40  # memory over a 10 minute soak

See loadtest/README.md for what each case is and how to read the table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from loadtest import peers, report
from loadtest.data import SIZES, DataSet, dataset
from loadtest.disk import durable_bandwidth, median_of
from loadtest.idle import idle_rss
from loadtest.peers import SenderRun, TlsFiles, file_meta_length, make_tls, send, wait_delivered
from loadtest.procwatch import ProcessWatch
from loadtest.targets import BASELINE, CASES, CaseEnv, Unavailable, delivered, scrape

# Instances per size: (direct, every relayed case). Direct DCMTK is 10-20x faster than
# any relay, so it sends more to run long enough to measure; the relays send a subset
# sized to run several seconds each on 2 cores.
FULL_COUNTS = {"10k": (10000, 1500), "0.5m": (4000, 1500), "50m": (32, 32)}
QUICK_COUNTS = {"10k": (1000, 200), "0.5m": (500, 100), "50m": (8, 8)}
DEFAULT_WORK = Path("/tmp/dicom-router-bench")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _min_dest_bytes(data: DataSet) -> int:
    # Each file at the destination holds the sent dataset plus at least a preamble.
    return sum(p.stat().st_size - file_meta_length(p) + 132 for p in data.files)


def run_case(case: str, data: DataSet, senders: int, tls: TlsFiles | None,
             work: Path, keep_logs: Path) -> dict[str, Any]:
    """One measured run of one case; never raises."""
    transport = "tls" if tls else "plain"
    result: dict[str, Any] = {
        "case": case, "size": data.size.name, "size_label": data.size.label,
        "senders": senders, "transport": transport, "count": len(data.files),
        "bytes": data.total_bytes, "status": "ok",
    }
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = CaseEnv(work, work / "dest", tls)
    try:
        with CASES[case][1](env) as endpoint:
            watch = ProcessWatch(endpoint.pid).start() if endpoint.pid else None
            cpu0 = watch.cpu_seconds() if watch else 0.0
            groups = data.split(senders)
            run = send(groups, data.contexts, endpoint.port, endpoint.called_ae,
                       work / "senders", tls=tls)
            # Wait for what the senders got acknowledged; briefly when some failed.
            acked = run.sent - run.failures
            grace = 30 if run.errors or acked < len(data.files) else 300
            done = (wait_delivered(env.dest_dir, acked,
                                   _min_dest_bytes(data) * acked // len(data.files),
                                   time.monotonic() + grace) if acked else None)
            if watch:
                watch.stop()
            _measure(result, data, run, done, watch, cpu0)
            if endpoint.metrics_url and done is not None:
                result["router_delivered"] = delivered(scrape(endpoint.metrics_url))
    except Unavailable as exc:
        result.update(status="not available", note=str(exc))
    except Exception as exc:  # a broken case is reported, the run goes on
        result.update(status="error", note=f"{type(exc).__name__}: {exc}"[:300])
        traceback.print_exc()
    if result["status"] == "error":
        _keep_logs(work, keep_logs / f"{case}-{data.size.name}-{senders}-{transport}")
    shutil.rmtree(work, ignore_errors=True)
    return result


def _measure(result: dict[str, Any], data: DataSet, run: SenderRun, done: float | None,
             watch: ProcessWatch | None, cpu0: float) -> None:
    count = len(data.files)
    if run.errors or run.sent < count or run.failures:
        result["status"] = "error"
        result["note"] = (f"sent {run.sent}/{count}, {run.failures} failed; "
                          + "; ".join(run.errors))[:300]
    if done is None:
        result["status"] = "error"
        result["note"] = (result.get("note", "") + " destination incomplete at deadline")[:300]
        return
    e2e = max(1e-6, done - run.first_send)
    result.update(
        e2e_s=round(e2e, 3),
        send_s=round(run.last_response - run.first_send, 3),
        inst_per_s=count / e2e,
        mb_per_s=data.total_bytes / 1e6 / e2e,
        lat_p50_ms=_ms(_percentile(run.latencies, 50)),
        lat_p99_ms=_ms(_percentile(run.latencies, 99)),
    )
    if watch is not None:
        cpu = watch.cpu_seconds() - cpu0
        result.update(cpu_s=round(cpu, 2), cpu_s_per_gb=cpu / (data.total_bytes / 1e9),
                      cpu_ms_per_inst=round(cpu * 1000 / count, 3),
                      peak_rss_mb=watch.peak_rss / 1e6, peak_pss_mb=watch.peak_pss / 1e6)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _keep_logs(work: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in work.rglob("*.log"):
        if log.stat().st_size < 50_000_000:
            shutil.copy(log, dest / f"{log.parent.name}-{log.name}")


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: r["inst_per_s"])
    chosen = dict(ok[(len(ok) - 1) // 2])
    if len(runs) > 1:
        chosen["repeats_inst_per_s"] = [round(r.get("inst_per_s") or 0, 1) for r in runs]
    return chosen


def _add_ratios(results: list[dict[str, Any]], disk: dict[str, dict[str, Any]]) -> None:
    rates = {(r["case"], r["size"], r["senders"], r["transport"]): r["inst_per_s"]
             for r in results if r["status"] == "ok"}
    for r in results:
        durable = disk.get(r["size"], {}).get("inst_per_s")
        if r["status"] == "ok" and durable:
            r["ratio_disk"] = r["inst_per_s"] / durable
        baseline = BASELINE.get(r["case"], "direct")
        base = rates.get((baseline, r["size"], r["senders"], r["transport"]))
        if r["status"] == "ok" and base:
            r["ratio_direct"] = r["inst_per_s"] / base


def run_matrix(args: argparse.Namespace, counts: dict[str, tuple[int, int]],
               ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The median of each case's rounds, and the median of the disk's measures (one before
    each round: loadtest/disk.py)."""
    work = args.work_dir
    tls = make_tls(work / "tls") if "tls" in args.transports else None
    # The larger count is generated; each case sends its own count's first files (with
    # --dcmtk-defaults, direct DCMTK is the slow one and gets fewer).
    datasets = {s: dataset(work / "data", SIZES[s], max(counts[s]), mixed=args.mixed)
                for s in args.sizes}
    unavailable: dict[tuple[str, str], dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    groups = [(s, n, t) for s in args.sizes for n in args.senders for t in args.transports]
    total = len(groups) * len(args.cases) * args.repeat
    done = 0
    runs: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    measures: list[dict[str, dict[str, Any]]] = []
    for rep in range(args.repeat):
        measures.append(_measure_disk(work, args.sizes))
        for g, (size, senders, transport) in enumerate(groups):
            # Rotate the order per group and round, so drift hits every case alike.
            shift = (g + rep) % len(args.cases)
            order = args.cases[shift:] + args.cases[:shift]
            for case in order:
                done += 1
                key = (case, transport)
                if key in unavailable:
                    result = dict(unavailable[key], size=size, senders=senders,
                                  size_label=SIZES[size].label)
                else:
                    direct = case.startswith("direct")
                    data = datasets[size].subset(counts[size][0 if direct else 1])
                    result = run_case(case, data, senders,
                                      tls if transport == "tls" else None,
                                      work / "run", args.out / "failed-logs")
                    if result["status"] == "not available":
                        unavailable[key] = result
                runs.setdefault((case, size, senders, transport), []).append(result)
                _progress(done, total, result)
    for rounds in runs.values():
        results.append(_median_run(rounds))
    disk = median_of(measures)
    _add_ratios(results, disk)
    return results, disk


def _measure_disk(work: Path, sizes: list[str]) -> dict[str, dict[str, Any]]:
    """The spool's filesystem (the work dir): fsync'd writes of each size, what durable
    store-and-forward cannot beat."""
    disk = durable_bandwidth(work / "disk", {s: SIZES[s].bytes for s in sizes})
    print("durable write bandwidth of the spool disk: " + ", ".join(
        f"{s} {d['inst_per_s']:.0f}/s ({d['mb_per_s']:.0f} MB/s)" for s, d in disk.items()),
        flush=True)
    return disk


def _progress(done: int, total: int, r: dict[str, Any]) -> None:
    what = f"[{done}/{total}] {r['size']:>4} x{r['senders']:<2} {r['transport']:<5} {r['case']:<12}"
    if r["status"] != "ok":
        print(f"{what} {r['status']}: {r.get('note', '')}", flush=True)
        return
    rss = f", peak {r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
    print(f"{what} {r['inst_per_s']:8.1f} inst/s {r['mb_per_s']:8.1f} MB/s "
          f"p50 {r['lat_p50_ms']} ms{rss}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small counts, 4 senders only: a ~2 minute smoke run")
    parser.add_argument("--sizes", help=f"comma list of {', '.join(SIZES)} (default: all)")
    parser.add_argument("--senders", help="comma list of concurrent senders (default 1,4,16)")
    parser.add_argument("--cases", help=f"comma list of {', '.join(CASES)} (default: all "
                        "but the -1assoc pair; --single-association adds them)")
    parser.add_argument("--single-association", action="store_true",
                        help="also the cases in front of a storescp without --fork")
    parser.add_argument("--transports", default="plain,tls", help="plain,tls (default both)")
    parser.add_argument("--dcmtk-defaults", action="store_true",
                        help="storescu and storescp with DCMTK's own defaults (Nagle on), "
                        "as in many modalities and PACS; use small --counts: direct DCMTK "
                        "then takes 40-90 ms per instance")
    parser.add_argument("--counts", help="instances per size for direct/relays, e.g. "
                        "10k=8000/2000,0.5m=4000/1500,50m=48 (default: see FULL_COUNTS)")
    parser.add_argument("--mixed", action="store_true",
                        help="mixed SOP classes and transfer syntaxes instead of one CT syntax")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the whole matrix; the median run is reported")
    parser.add_argument("--out", type=Path, default=Path("loadtest/results"))
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK,
                        help="data cache and scratch space (several GB with 50m)")
    parser.add_argument("--no-idle", action="store_true",
                        help="skip the idle memory measurement of the default config")
    parser.add_argument("--soak", type=float, metavar="MINUTES",
                        help="soak mode: a fixed rate for MINUTES against the router")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="soak: instances per second (default 20)")
    parser.add_argument("--soak-size", default="0.5m", help="soak: instance size (default 0.5m)")
    parser.add_argument("--soak-case", default="router", choices=["router", "router-tuned"])
    args = parser.parse_args(argv)
    args.sizes = _list(args.sizes, list(SIZES), SIZES)
    default_cases = [c for c in CASES if not c.endswith("-1assoc")
                     and not c.startswith("router-acceptors") and c != "router-tls-out"]
    if args.single_association:
        default_cases = list(CASES)
    args.cases = _list(args.cases, default_cases, CASES)
    args.transports = _list(args.transports, ["plain", "tls"], {"plain": 1, "tls": 1})
    default_senders = "4" if args.quick else "1,4,16"
    args.senders = [int(x) for x in (args.senders or default_senders).split(",")]
    return args


def _list(value: str | None, default: list[str], known: Any) -> list[str]:
    items = default if not value else [x.strip() for x in value.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (choose from {', '.join(known)})")
    return items


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.soak:
        from loadtest.soak import soak

        return soak(args)
    counts = dict(QUICK_COUNTS if args.quick else FULL_COUNTS)
    peers.DCMTK_DEFAULTS["on"] = args.dcmtk_defaults
    for item in (args.counts or "").split(","):
        if item:
            name, _, value = item.partition("=")
            direct, _, relayed = value.partition("/")
            counts[name] = (int(direct), int(relayed or direct))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.monotonic()
    # The default config's idle memory (the disk's bandwidth is measured in each round).
    idle = None if args.no_idle else idle_rss(args.work_dir / "idle")
    if idle is not None:
        print(f"idle RSS of the default config: {idle['total_mb']:.0f} MB "
              f"({', '.join(f'{k} {v:.0f}' for k, v in idle['processes'].items())})", flush=True)
    results, disk = run_matrix(args, counts)
    doc = {
        "started": started,
        "duration_s": round(time.monotonic() - t0, 1),
        "machine": report.machine(),
        "settings": {
            "command": " ".join(["python -m loadtest.bench", *(argv or sys.argv[1:])]),
            "sizes": args.sizes, "senders": args.senders, "cases": args.cases,
            "transports": args.transports,
            "counts": {s: "/".join(map(str, counts[s])) for s in args.sizes},
            "mixed": args.mixed, "repeat": args.repeat, "quick": args.quick,
            "dcmtk_defaults": args.dcmtk_defaults,
        },
        "cases": {k: CASES[k][0] for k in args.cases},
        "disk": disk,
        "idle": idle,
        "results": results,
        "targets": {**{c: report.targets(results, c, idle) for c in ("router", "router-tuned")},
                    "router-1assoc": report.single_association_targets(results)},
    }
    folder = report.write(doc, args.out)
    print(report.markdown(doc))
    print(f"wrote {folder}/results.json, results.md, chart.png and {args.out}/latest.md "
          f"in {doc['duration_s']:.0f} s")
    # A baseline that fails (the naive forwarder dropping a store, say) is a note in its row;
    # only a failure of the router's own cases fails the run.
    failed = [r for r in results if r["status"] == "error"]
    for r in failed:
        print(f"error in {r['case']} {r['size']} x{r['senders']} {r['transport']}: "
              f"{r.get('note', '')}")
    return 1 if any(r["case"].startswith("router") for r in failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
