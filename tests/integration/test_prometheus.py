"""A real Prometheus scrapes a real router: what the router counts is what Prometheus sees."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dcmtk import LOCALHOST, StoreSCP, run_storescu
from tests.dicom_samples import dataset_digest, generate_mixed_set
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.prometheus_server import PrometheusServer, prometheus_missing
from tests.integration.router_process import RouterProcess, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(prometheus_missing(), reason="prometheus is not installed"),
]

JOB = "dicom-router"
SENT = 20


@pytest.fixture
def routed(start_router: RouterFactory,
           storescp: Callable[[str], StoreSCP]) -> tuple[RouterProcess, StoreSCP]:
    pacs = storescp("PACS")
    router = start_router({"destinations": {"pacs": dicom_destination(pacs)},
                           "rules": [{"name": "all", "forward": ["pacs"]}]})
    return router, pacs


@pytest.fixture
def prometheus(routed: tuple[RouterProcess, StoreSCP], tmp_path: Path
               ) -> Iterator[PrometheusServer]:
    router, _ = routed
    with PrometheusServer(tmp_path / "prometheus", {JOB: [router.metrics_port]}) as server:
        yield server


def _settled(prom: PrometheusServer, expected: dict[str, float]) -> dict[str, float | None]:
    """What Prometheus answers for each expression now (None: no series yet)."""
    return {expr: prom.value(expr) for expr in expected}


@pytest.mark.timeout(120)
def test_prometheus_scrapes_what_the_router_counted(
    routed: tuple[RouterProcess, StoreSCP], prometheus: PrometheusServer, tmp_path: Path
) -> None:
    router, pacs = routed
    sources = generate_mixed_set(tmp_path / "src", SENT)
    sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert sent.returncode == 0, sent.stdout + sent.stderr

    expected: dict[str, float] = {
        f'up{{job="{JOB}"}}': 1,
        'dicom_router_instances_received_total{result="accepted"}': SENT,
        'sum(dicom_router_instances_forwarded_total{result="delivered"})': SENT,
        'dicom_router_dimse_requests_total{command="C-STORE",status="0x0000"}': SENT,
        f'sum(dicom_router_associations_total{{job="{JOB}",result="accepted"}})': 1,
        f'count(dicom_router_build_info{{job="{JOB}"}} == 1)': 1,
    }
    seen: dict[str, float | None] = {}

    def scraped() -> bool:
        seen.update(_settled(prometheus, expected))
        return seen == expected

    assert wait_for(scraped, timeout=60, interval=0.5), (
        f"Prometheus answers {seen}, expected {expected}\n{prometheus.log()[-2000:]}")

    targets = [t for t in prometheus.targets() if t["labels"]["job"] == JOB]
    assert len(targets) == 1, targets
    assert targets[0]["health"] == "up", targets[0]
    assert targets[0]["scrapeUrl"] == f"http://127.0.0.1:{router.metrics_port}/metrics"
    assert not targets[0]["lastError"]

    versions = [labels.get("version") for labels, _ in
                prometheus.query(f'dicom_router_build_info{{job="{JOB}"}}')]
    assert versions and all(versions), versions

    arrived = {dataset_digest(p) for p in pacs.received_files()}
    assert arrived == {dataset_digest(p) for p in sources}
    print(f"\nPROMETHEUS: sent={SENT}, "
          + ", ".join(f"{expr}={value:g}" for expr, value in expected.items())
          + f", build_info versions={versions}, arrived={len(arrived)}")
