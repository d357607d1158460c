"""A broker that runs but does nothing (a deadlock, a hung fsync; SIGSTOP here) makes the
router not ready: every C-STORE would wait listen.submit_timeout for 0xA700, and a load
balancer must take the cell out of rotation instead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import RouterFactory
from tests.integration.router_process import ROUTER, http_get, wait_for

pytestmark = pytest.mark.integration


def test_readyz_turns_503_while_the_broker_is_hung_and_200_once_it_goes_on(
        start_router: RouterFactory, tmp_path: Path) -> None:
    router = start_router({
        "destinations": {"out": {"type": "folder", "path": str(tmp_path / "out")}},
        "rules": [{"name": "all", "forward": ["out"]}],
    })
    broker = router.child_pid("broker")
    os.kill(broker, signal.SIGSTOP)
    try:
        assert wait_for(lambda: http_get(router.metrics_port, "/readyz")[0] == 503,
                        timeout=60), http_get(router.metrics_port, "/readyz")
        code, body = http_get(router.metrics_port, "/readyz")
        assert "broker has not reported" in body, (code, body)
        # The broker's last rows are not shown as the current state.
        answer = json.loads(http_get(router.metrics_port, "/api/destinations")[1])
        assert answer["stale"] is True and answer["updated"] > 0, answer
        listed = _list(router.config_path)
        assert listed.returncode == 3 and "out" in listed.stdout, listed
        assert "the broker has not reported for" in listed.stderr, listed
        assert wait_for(lambda: router.metric("dicom_router_ready") == 0)
        assert router.metric("dicom_router_broker_report_age_seconds") > 0
    finally:
        os.kill(broker, signal.SIGCONT)
    assert wait_for(lambda: http_get(router.metrics_port, "/readyz")[0] == 200, timeout=60)
    assert wait_for(lambda: _list(router.config_path).returncode == 0), _list(router.config_path)
    assert json.loads(http_get(router.metrics_port, "/api/destinations")[1])["stale"] is False


def _list(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, "destinations", "list", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
