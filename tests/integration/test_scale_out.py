"""Two router cells behind HAProxy in TCP mode: associations spread over both, and a cell
stopped with SIGTERM mid-send leaves the rotation without losing an acknowledged instance.

Each cell forwards to its own storescp, so that arrivals can be counted per cell; the
setup is the one docs/scale-out.md describes.
"""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tests.dcmtk import LOCALHOST, StoreSCP, free_ports, run_storescu
from tests.dicom_samples import dataset_digest, generate_mixed_set
from tests.integration.conftest import dicom_destination
from tests.integration.router_process import RouterProcess, http_get, wait_for
from tests.integration.senders import BackgroundSend

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

CELLS = ("cell-a", "cell-b")
FAST_RETRY = {"max_attempts": 1000, "initial_delay": 0.2, "max_delay": 1.0}


def haproxy_config(port: int, stats_port: int, cells: dict[str, RouterProcess]) -> str:
    """L4 (TCP) balancing of DICOM associations; a cell is in rotation while its /readyz
    answers 200 (checked on its metrics port, not its DICOM port)."""
    servers = "\n".join(
        f"    server {name} {LOCALHOST}:{cell.port} check port {cell.metrics_port}"
        for name, cell in cells.items())
    return f"""\
global
    log stdout format raw local0 info
    maxconn 512

defaults
    mode tcp
    log global
    option tcplog
    # A cell that has just closed its listener (stopping) refuses the connection: try another.
    option redispatch
    retries 2
    timeout connect 5s
    # A DICOM association may sit idle between studies, and one C-STORE of a large
    # multi-frame can take long: size these above the peers' own network timeouts.
    timeout client 120s
    timeout server 120s
    timeout check 2s

frontend dicom
    bind {LOCALHOST}:{port}
    default_backend cells

backend cells
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 1
{servers}

frontend stats
    mode http
    bind {LOCALHOST}:{stats_port}
    timeout client 10s
    stats enable
    stats uri /stats
"""


class HAProxy:
    """`haproxy -db` in front of the cells; stopped by its own PID."""

    def __init__(self, workdir: Path, cells: dict[str, RouterProcess]) -> None:
        self.workdir, self.cells = workdir, cells
        self.port, self.stats_port = free_ports(2)
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> HAProxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(haproxy_config(self.port, self.stats_port, self.cells))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["haproxy", "-f", str(self.config_path), "-db"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir)
        if not wait_for(self._all_up, timeout=timeout, interval=0.2):
            raise RuntimeError(f"haproxy backends not up: {self._status_or_none()}\n"
                               f"{self.log()[-3000:]}")
        return self

    def _status_or_none(self) -> dict[str, str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.log()}")
        try:
            return self.status()
        except OSError:
            return None

    def _all_up(self) -> bool:
        status = self._status_or_none()
        return status is not None and all(status.get(n) == "UP" for n in self.cells)

    def status(self) -> dict[str, str]:
        """Server name -> HAProxy's status of it (UP, DOWN, ...), from the CSV stats."""
        code, body = http_get(self.stats_port, "/stats;csv")
        assert code == 200, body
        rows = csv.DictReader(body.lstrip("# ").splitlines())
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "cells"
                and row["svname"] in self.cells}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> HAProxy:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Cluster:
    """Two cells, each forwarding to its own storescp, behind one HAProxy."""

    def __init__(self, tmp_path: Path) -> None:
        self.pacs = {name: StoreSCP(tmp_path / f"pacs-{name}", "PACS")
                     for name in CELLS}
        self.cells: dict[str, RouterProcess] = {}
        self.proxy: HAProxy | None = None
        self.tmp_path = tmp_path

    def start(self) -> Cluster:
        for name in CELLS:
            self.pacs[name].__enter__()
            self.cells[name] = RouterProcess(self.tmp_path / name, {
                "drain_grace": 10,
                "destinations": {"pacs": {**dicom_destination(self.pacs[name]),
                                          "retry": FAST_RETRY}},
                "rules": [{"name": "all", "forward": ["pacs"]}],
            }).start()
        self.proxy = HAProxy(self.tmp_path / "haproxy", self.cells).start()
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for cell in self.cells.values():
            cell.stop()
        for pacs in self.pacs.values():
            pacs.stop()

    @property
    def port(self) -> int:
        assert self.proxy is not None
        return self.proxy.port

    def arrived(self) -> dict[str, set[str]]:
        """Cell name -> digests of what its destination stored."""
        return {name: {dataset_digest(p) for p in pacs.received_files()}
                for name, pacs in self.pacs.items()}

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until no cell has a job left on its spool."""
        for name, cell in self.cells.items():
            jobs = cell.spool / "jobs"
            assert wait_for(lambda jobs=jobs: not any(jobs.glob("*.dcm")), timeout=timeout), (
                f"{name}: {len(list(jobs.glob('*.dcm')))} jobs still queued\n"
                f"{cell.log()[-3000:]}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def metric_sum(cell: RouterProcess, name: str, **labels: str) -> float:
    """Sum of every sample of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in cell.metrics().splitlines():
        if not line.startswith(name + "{"):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total


def _report(case: str, **counts: object) -> None:
    print(f"\nSCALE-OUT {case}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


@pytest.mark.timeout(120)
def test_associations_are_spread_over_both_cells(cluster: Cluster, tmp_path: Path) -> None:
    runs = [generate_mixed_set(tmp_path / f"src{i}", 10) for i in range(8)]
    for files in runs:
        sent = run_storescu(files, LOCALHOST, cluster.port, called_ae="DICOM-ROUTER",
                            timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    cluster.settle()

    sources = {dataset_digest(p) for files in runs for p in files}
    arrived = cluster.arrived()
    assert set().union(*arrived.values()) == sources
    associations = {name: metric_sum(cell, "dicom_router_associations_total", result="accepted")
                    for name, cell in cluster.cells.items()}
    accepted = {name: metric_sum(cell, "dicom_router_instances_received_total",
                                 result="accepted") for name, cell in cluster.cells.items()}
    assert all(n > 0 for n in associations.values()), associations
    assert sum(associations.values()) == len(runs)
    assert sum(accepted.values()) == len(sources)
    _report("spread", runs=len(runs), sent=len(sources),
            associations={k: int(v) for k, v in associations.items()},
            accepted={k: int(v) for k, v in accepted.items()},
            arrived={k: len(v) for k, v in arrived.items()})


@pytest.mark.timeout(120)
def test_sigterm_of_one_cell_loses_no_acknowledged_instance(
    cluster: Cluster, tmp_path: Path
) -> None:
    batches = [generate_mixed_set(tmp_path / f"src{i}", 150, size_bytes=8_000) for i in range(4)]
    senders = [BackgroundSend(files, cluster.port, timeout=100) for files in batches]
    for send in senders:
        send.start()
    victim_name, survivor_name = CELLS
    victim, survivor = cluster.cells[victim_name], cluster.cells[survivor_name]
    assert wait_for(lambda: victim.metric("dicom_router_instances_received_total",
                                          result="accepted") >= 30, timeout=60)
    assert victim.process is not None
    victim.process.send_signal(signal.SIGTERM)

    # Draining: /readyz turns 503 and HAProxy takes the cell out of the rotation.
    assert cluster.proxy is not None
    proxy = cluster.proxy
    assert wait_for(lambda: proxy.status()[victim_name].startswith("DOWN"), timeout=30), (
        proxy.status())
    for send in senders:
        send.join(110)
        assert not send.is_alive(), "storescu still running"
    assert victim.process.wait(60) == 0, victim.log()[-3000:]
    kept = len(list((victim.spool / "jobs").glob("*.dcm")))

    acknowledged = [p for send in senders for p in send.acknowledged()]
    refused = sum(send.output.count("Refused: OutOfResources") for send in senders)
    unacknowledged = [p for files in batches for p in files if p not in set(acknowledged)]

    # A new association while the cell is out of the rotation goes to the survivor; send
    # what was not acknowledged again, as a modality would, plus a few new instances.
    before = metric_sum(survivor, "dicom_router_associations_total", result="accepted")
    resend = unacknowledged + generate_mixed_set(tmp_path / "late", 10)
    again = run_storescu(resend, LOCALHOST, cluster.port, called_ae="DICOM-ROUTER",
                         extra_args=["-nh"], timeout=60)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert metric_sum(survivor, "dicom_router_associations_total",
                      result="accepted") == before + 1

    # Jobs kept on the stopped cell's spool are delivered when it comes back.
    victim.start()
    assert wait_for(lambda: proxy.status()[victim_name] == "UP", timeout=30), proxy.status()
    cluster.settle()

    arrived = cluster.arrived()
    everywhere = set().union(*arrived.values())
    missing = {dataset_digest(p) for p in acknowledged} - everywhere
    assert not missing, f"{len(missing)} acknowledged instances never arrived"
    assert {dataset_digest(p) for p in resend} <= everywhere
    per_sender = [
        (len(send.acknowledged()), len(send.files),
         next((name for name, got in arrived.items()
               if send.acknowledged() and dataset_digest(send.acknowledged()[0]) in got), "-"))
        for send in senders]
    _report("SIGTERM of one cell", sent=sum(len(b) for b in batches),
            acknowledged=len(acknowledged), refused_while_draining=refused,
            unacknowledged=len(unacknowledged), kept_on_spool=kept, resent=len(resend),
            arrived={k: len(v) for k, v in arrived.items()},
            senders="; ".join(f"{a}/{n} via {c}" for a, n, c in per_sender))
