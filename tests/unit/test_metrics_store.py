"""The multiprocess metrics store keeps this process's pid instead of asking the kernel on
every write (router/core/metrics.py): each process still writes its own file, a forked
child included. Run in a child interpreter, where PROMETHEUS_MULTIPROC_DIR is set before
prometheus_client is imported, as in the router's processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CHILD = r"""
import os, sys
from router.core import metrics
from prometheus_client import values
assert values.ValueClass is not values.MutexValue
counter = metrics.DIMSE_REQUESTS.labels("C-ECHO", "0x0000")
counter.inc()
child = os.fork()
if child == 0:
    counter.inc(5)  # the child's own file, not the parent's
    os._exit(0)
os.waitpid(child, 0)
counter.inc()
print(os.getpid(), child)
"""


def _echoes(path: Path) -> float:
    from prometheus_client.mmap_dict import MmapedDict

    store = MmapedDict(str(path), read_mode=True)  # type: ignore[no-untyped-call]
    try:
        return sum(value for key, value, _ in store.read_all_values()  # type: ignore[no-untyped-call]
                   if "C-ECHO" in key)
    finally:
        store.close()  # type: ignore[no-untyped-call]


def test_each_process_writes_its_own_file_a_forked_child_included(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
                          cwd=Path(__file__).parents[2], timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    parent, child = done.stdout.split()
    assert _echoes(tmp_path / f"counter_{parent}.db") == 2
    assert _echoes(tmp_path / f"counter_{child}.db") == 5


def test_the_command_line_leaves_prometheus_client_to_after_its_multiprocess_dir() -> None:
    """`dicom-router run` sets PROMETHEUS_MULTIPROC_DIR after its own imports: one of them
    loading the metrics would put the supervisor's (reloads, restarts, readiness) in memory,
    out of /metrics (the spool's did, for its recovery error counter)."""
    code = ("import sys\nimport router.cli.main\n"
            "print(sorted(n for n in sys.modules if n.startswith(('prometheus_client', "
            "'router.core.metrics'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items()
                               if k != "PROMETHEUS_MULTIPROC_DIR"},
                          cwd=Path(__file__).parents[2], timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_dead_childs_gauge_files_go_with_it(tmp_path: Path) -> None:
    """Every child imports the supervisor-only "max" gauges and writes them at 0: one more
    gauge_max_<pid>.db per restart of a child, for ever. Its live* files went already."""
    from router.core.metrics import mark_dead

    for name in ("gauge_max_123.db", "gauge_livemax_123.db", "gauge_livesum_123.db",
                 "counter_123.db", "gauge_max_77.db"):
        (tmp_path / name).write_bytes(b"")
    mark_dead(123, str(tmp_path))
    mark_dead(None, str(tmp_path))  # a child that never started
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["gauge_max_77.db"]


def _metric_file(path: Path, metric: str, value: float) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    store = MmapedDict(str(path))  # type: ignore[no-untyped-call]
    store.write_value(mmap_key(metric, metric, (), (), "help"), value, 0.0)  # type: ignore[no-untyped-call]
    store.close()  # type: ignore[no-untyped-call]


def test_a_scrape_survives_a_childs_files_going_while_it_reads(tmp_path: Path,
                                                                monkeypatch: Any) -> None:
    """A child that dies mid-scrape (every worker restarts on a reload) has its gauge_max file
    removed between the scrape's listing and its reading: /metrics answered nothing at all
    (the client saw RemoteDisconnected) instead of the other processes' figures."""
    import glob
    import urllib.request

    from router.service.http_endpoint import HttpEndpoint

    _metric_file(tmp_path / "gauge_max_11.db", "dicom_router_peak", 7.0)
    _metric_file(tmp_path / "counter_22.db", "dicom_router_things", 3.0)
    listed = glob.glob
    gone = [str(tmp_path / "gauge_max_33.db")]  # listed once, removed before it is read

    def racing_glob(pattern: str) -> list[str]:
        return [*listed(pattern), gone.pop()] if gone else listed(pattern)

    monkeypatch.setattr(glob, "glob", racing_glob)
    endpoint = HttpEndpoint("127.0.0.1", 0, str(tmp_path), lambda: (True, "ok"))
    endpoint.start()
    try:
        url = f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    finally:
        endpoint.stop()
    assert "dicom_router_peak 7.0" in text and "dicom_router_things 3.0" in text
    assert not gone


def test_a_scrape_skips_a_file_a_starting_child_has_not_sized_yet(tmp_path: Path) -> None:
    """prometheus_client creates a process's file empty, then sizes it: a scrape in between
    read 0 bytes, raised struct.error and answered nothing (RemoteDisconnected in two CI
    runs, each under a reload that restarted the workers). An empty file holds no sample."""
    _metric_file(tmp_path / "counter_22.db", "dicom_router_things", 3.0)
    (tmp_path / "counter_44.db").touch()
    assert _scrape(tmp_path)[("dicom_router_things", ())] == 3.0


def _scrape(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import CollectorRegistry

    from router.service.metrics_collector import ChildrenCollector

    registry = CollectorRegistry()
    ChildrenCollector(registry, path=str(folder))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() for s in metric.samples}


def _histogram_file(path: Path, metric: str, observed: dict[str, float]) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    store = MmapedDict(str(path))  # type: ignore[no-untyped-call]
    for le, count in observed.items():
        key = mmap_key(metric, f"{metric}_bucket", ("le",), (le,), "help")
        store.write_value(key, count, 0.0)  # type: ignore[no-untyped-call]
    store.write_value(mmap_key(metric, f"{metric}_sum", (), (), "help"), 0.5, 0.0)  # type: ignore[no-untyped-call]
    store.write_value(mmap_key(metric, f"{metric}_count", (), (), "help"),  # type: ignore[no-untyped-call]
                      sum(observed.values()), 0.0)
    store.close()  # type: ignore[no-untyped-call]


def test_a_dead_childs_counters_and_histograms_are_folded_not_kept_per_pid(
        tmp_path: Path) -> None:
    """Each restarted child left counter_<pid>.db and histogram_<pid>.db for the router's
    lifetime and every scrape merged them all (110 files after a few reloads, thousands a day
    in a crash loop). Its values now move into counter_dead.db / histogram_dead.db: the
    scrape answers the same totals, and the files are those of live processes plus two."""
    from router.core.metrics import mark_dead

    for pid, value in ((11, 3.0), (12, 4.0), (13, 5.0)):
        _metric_file(tmp_path / f"counter_{pid}.db", "dicom_router_things", value)
        _histogram_file(tmp_path / f"histogram_{pid}.db", "dicom_router_seconds",
                        {"0.1": value, "+Inf": 1.0})
    before = _scrape(tmp_path)
    assert before[("dicom_router_things", ())] == 12.0
    mark_dead(11, str(tmp_path))
    mark_dead(12, str(tmp_path))
    mark_dead(12, str(tmp_path))  # twice (a reload's and the reaper's): counted once
    assert _scrape(tmp_path) == before
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_13.db", "counter_dead.db", "histogram_13.db", "histogram_dead.db"]
    mark_dead(13, str(tmp_path))
    assert _scrape(tmp_path) == before
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_dead.db", "histogram_dead.db"]
