"""A real Prometheus server, started on a free loopback port to scrape test routers.

``with PrometheusServer(tmp_path / "prom", {"dicom-router": [9101]}) as prom: ...`` writes a
prometheus.yml (1 s scrape interval), starts `prometheus`, waits for /-/ready and stops it by
its own PID on exit. `query` and `targets` read the HTTP API.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.dcmtk import LOCALHOST, free_port
from tests.integration.router_process import http_get

PROMETHEUS = "prometheus"


def prometheus_missing() -> bool:
    return shutil.which(PROMETHEUS) is None


def scrape_config(jobs: dict[str, list[int]], interval: str = "1s") -> dict[str, Any]:
    """prometheus.yml: one job per name, scraping /metrics on each loopback port."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"{LOCALHOST}:{p}" for p in ports]}],
            }
            for job, ports in jobs.items()
        ],
    }


class PrometheusServer:
    def __init__(self, workdir: Path, jobs: dict[str, list[int]],
                 startup_timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.jobs = jobs
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.jobs)))
        # A free port may be taken before prometheus binds it: try a few.
        for _ in range(3):
            self.port = free_port()
            if self._launch(config):
                return self
            self.stop()
        raise RuntimeError(f"prometheus did not become ready:\n{self.log()[-3000:]}")

    def _launch(self, config: Path) -> bool:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address={LOCALHOST}:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if http_get(self.port, "/-/ready")[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a successful /api/v1 answer (raises on an error answer)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(self.port, f"/api/v1/{path}{query}", timeout=5.0)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise RuntimeError(f"prometheus {path} answered {status}: {body[:500]}")
        return answer["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant vector query: (labels, value) per series."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise RuntimeError(f"{expr!r} is not an instant vector: {data['resultType']}")
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def value(self, expr: str) -> float | None:
        """The value of a query that yields one series; None when it yields none."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise RuntimeError(f"{expr!r} yields {len(result)} series: {result}")
        return result[0][1]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def __enter__(self) -> PrometheusServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
