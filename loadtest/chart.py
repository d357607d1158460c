"""The benchmark's chart: each case's rate over direct DCMTK's, per size and transport."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from loadtest.report import CASE_ORDER


def chart(doc: dict[str, Any], path: Path) -> bool:
    """Ratio to direct per size (columns) and transport (rows), bars per case."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (scripts/install-bench-deps.sh)", file=sys.stderr)
        return False
    results = [r for r in doc["results"] if r["status"] == "ok"]
    sizes = [s for s in doc["settings"]["sizes"] if any(r["size"] == s for r in results)]
    transports = [t for t in ("plain", "tls") if any(r["transport"] == t for r in results)]
    if not sizes or not transports:
        return False
    cases = [c for c in CASE_ORDER if any(r["case"] == c for r in results)]
    colours = {"direct": "#888888", "durable-receiver": "#9467bd", "naive": "#d62728",
               "orthanc": "#ff7f0e", "router": "#1f77b4", "router-tuned": "#2ca02c"}
    fig, axes = plt.subplots(len(transports), len(sizes), squeeze=False,
                             figsize=(4.8 * len(sizes), 3.8 * len(transports)))
    # The lower x direct target of each size (RATIO_TARGETS); 50 MB's is against the disk.
    targets = {"10k": 0.25, "0.5m": 0.3}
    for row, transport in enumerate(transports):
        for col, size in enumerate(sizes):
            ax = axes[row][col]
            rows = [r for r in results if r["size"] == size and r["transport"] == transport]
            senders = sorted({r["senders"] for r in rows})
            width = 0.8 / max(1, len(cases))
            for i, case in enumerate(cases):
                xs, ys = [], []
                for j, n in enumerate(senders):
                    match = [r for r in rows if r["case"] == case and r["senders"] == n]
                    if match and match[0].get("ratio_direct") is not None:
                        xs.append(j + (i - (len(cases) - 1) / 2) * width)
                        ys.append(match[0]["ratio_direct"])
                bars = ax.bar(xs, ys, width, label=case, color=colours.get(case))
                ax.bar_label(bars, [_ratio_label(y) for y in ys],
                             fontsize=6, padding=1)
            labels = []
            for n in senders:
                d = [r for r in rows if r["case"] == "direct" and r["senders"] == n]
                rate = f"\ndirect {d[0]['inst_per_s']:,.0f}/s" if d else ""
                labels.append(f"{n} sender{'s' if n > 1 else ''}{rate}")
            ax.set_xticks(range(len(senders)), labels, fontsize=8)
            if size in targets:
                ax.axhline(targets[size], color="black", linestyle="--", linewidth=0.8)
            # Log scale: relays run at 1-20% of direct, which a linear axis flattens.
            ax.set_yscale("log")
            ax.set_ylim(0.002, 2)
            label = rows[0]["size_label"] if rows else size
            ax.set_title(f"{label}, {transport}", fontsize=10)
            ax.set_ylabel("delivered rate / direct DCMTK")
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper right", ncols=2)
    fig.suptitle(f"dicom-router benchmark ({doc['machine']['cores']} cores), "
                 "bars: delivered rate / direct (log scale), dashed: target", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _ratio_label(y: float) -> str:
    if y >= 0.995:
        return f"{y:.0f}" if y < 1.5 else f"{y:.1f}"
    return f"{y:.3f}" if y < 0.01 else f"{y:.2f}"
