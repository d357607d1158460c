"""The router over IPv6 (the loopback ::1): Kubernetes clusters and hospital networks that run
IPv6 only or dual stack must reach every port the router serves."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import yaml

from tests.integration.router_process import ROUTER, RouterProcess


def _folder_config(tmp_path: Path) -> dict[str, object]:
    return {"destinations": {"out": {"type": "folder", "path": str(tmp_path / "out")}},
            "rules": [{"name": "all", "forward": ["out"]}]}


def test_the_metrics_port_serves_ipv6_and_the_cli_reaches_it(tmp_path: Path) -> None:
    """metrics.host "::" (what an IPv6-only pod needs for its probes and Prometheus) serves
    both families; `status --config` with metrics.host "::1" reaches it in brackets."""
    router = RouterProcess(tmp_path / "router", _folder_config(tmp_path))
    config = yaml.safe_load(router.config_path.read_text())
    config["metrics"]["host"] = "::"
    router.config_path.write_text(yaml.safe_dump(config))
    with router:  # starts it, waiting for /readyz on 127.0.0.1: "::" is dual stack
        url = f"http://[::1]:{router.metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
        config["metrics"]["host"] = "::1"
        on_ipv6 = tmp_path / "ipv6.yaml"
        on_ipv6.write_text(yaml.safe_dump(config))
        status = subprocess.run([*ROUTER, "status", "--config", str(on_ipv6), "--once"],
                                capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "READY" in status.stdout
    assert "metrics and health on http://[::]:" in router.log()
