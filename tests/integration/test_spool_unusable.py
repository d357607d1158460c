"""A spool that cannot take commits any more while the router runs (jobs/ replaced by a file
here; read-only or failing in production): each C-STORE is answered 0xA700 (retry later)
with one error line and no traceback, /readyz turns 503, and both recover by themselves once
the spool works again."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dcmtk import run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, generate_mixed_set
from tests.integration.conftest import RouterFactory
from tests.integration.router_process import http_get, wait_for

pytestmark = pytest.mark.integration

AE = "DICOM-ROUTER"


def test_a_spool_that_cannot_take_commits_answers_a700_and_is_not_ready_until_it_can(
        start_router: RouterFactory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    router = start_router({
        "destinations": {"out": {"type": "folder", "path": str(out)}},
        "rules": [{"name": "all", "forward": ["out"]}],
    })
    sources = generate_mixed_set(tmp_path / "src", 3, syntaxes=(EXPLICIT_VR_LE,))
    jobs = router.spool / "jobs"
    jobs.rename(router.spool / "jobs.moved")
    jobs.write_bytes(b"")  # jobs/ is now a file
    try:
        run_storescu(sources, "127.0.0.1", router.port, called_ae=AE)
        assert router.metric("dicom_router_dimse_requests_total", command="C-STORE",
                             status="0xA700") >= 1, router.log()[-3000:]
        assert router.metric("dicom_router_dimse_requests_total", command="C-STORE",
                             status="0x0110") == 0, router.log()[-3000:]
        log = router.log()
        assert "Traceback" not in log and "cannot commit a C-STORE to the spool" in log, log
        assert str(jobs) in log, log  # the error names the path
        assert wait_for(lambda: http_get(router.metrics_port, "/readyz")[0] == 503), \
            http_get(router.metrics_port, "/readyz")
        assert "spool cannot take commits" in http_get(router.metrics_port, "/readyz")[1]
    finally:
        jobs.unlink()
        (router.spool / "jobs.moved").rename(jobs)
    assert wait_for(lambda: http_get(router.metrics_port, "/readyz")[0] == 200), \
        http_get(router.metrics_port, "/readyz")
    sent = run_storescu(sources, "127.0.0.1", router.port, called_ae=AE)
    assert sent.returncode == 0, sent.stderr
    assert wait_for(lambda: len(list(out.rglob("*.dcm"))) == 3), router.log()[-3000:]
