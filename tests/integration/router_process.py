"""Run the real `dicom-router run` as a subprocess on free ports, for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.dcmtk import free_ports

ROUTER = [sys.executable, "-m", "router.cli"]


def _acceptors() -> dict[str, int]:
    """ROUTER_TEST_ACCEPTORS=N runs every test router with N acceptor processes (unless the
    test sets listen.acceptors): the suite then checks the limits and the status over N."""
    wanted = os.environ.get("ROUTER_TEST_ACCEPTORS")
    return {"acceptors": int(wanted)} if wanted else {}


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def raw_http(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the HTTP port and read until the router closes (malformed, slow or
    oversized requests that no HTTP client library would send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def child_pids(parent: int) -> list[int]:
    """The live processes whose parent is `parent` (from /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == parent:
            children.append(int(entry))
    return children


class RouterProcess:
    """A router with its own spool, ports and log file; stopped (SIGTERM, then kill) on exit."""

    def __init__(self, workdir: Path, config: dict[str, Any], port: int | None = None) -> None:
        """`port`: the DICOM port, when a peer must know it first (an archive that moves to
        the router); otherwise a free one."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.metrics_port = free_ports(2)
        if port is not None:
            self.port = port
        config = {
            "spool": {"path": str(workdir / "spool")},
            **config,
            "listen": {"host": "127.0.0.1", "port": self.port, **_acceptors(),
                       **config.get("listen", {})},
            "metrics": {**config.get("metrics", {}), "host": "127.0.0.1",
                        "port": self.metrics_port},
        }
        self.spool = Path(config["spool"]["path"])
        self.config_path = workdir / "router.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "router.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> RouterProcess:
        self.launch()
        return self.await_ready(timeout)

    def launch(self) -> RouterProcess:
        """Start the router without waiting for it (a test that acts during the start)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # A process group of its own: kill_all() reaches every process of the router at
        # once, a child the supervisor is starting that very moment included.
        self.process = subprocess.Popen(
            [*ROUTER, "run", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
            start_new_session=True,
        )
        log.close()
        return self

    def await_ready(self, timeout: float = 30.0) -> RouterProcess:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited with {self.process.returncode}:\n{self.log()}")
            try:
                if http_get(self.metrics_port, "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"router not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        return http_get(self.metrics_port, "/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample, 0 if absent."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{name}{{{want}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if _normalise(sample) == prefix:
                return float(value)
        return 0.0

    def metric_sum(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` whose labels include `labels` (0 if none)."""
        want = {f'{k}="{v}"' for k, v in labels.items()}
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            sample_name, _, rest = sample.partition("{")
            if sample_name == name and want <= set(filter(None, rest.rstrip("}").split(","))):
                total += float(value)
        return total

    def status(self) -> dict[str, Any]:
        """The router's /status (JSON): associations, destinations, spool."""
        code, body = http_get(self.metrics_port, "/status")
        assert code == 200, body
        return dict(json.loads(body))

    def accepted_by_acceptor(self) -> dict[str, int]:
        """How many associations each acceptor process has accepted (/status)."""
        from router.core.acceptor_status import acceptor_snapshots

        return {name: int(snap.get("accepted", 0))
                for name, snap in acceptor_snapshots(self.status()).items()}

    def spread_over_acceptors(self, before: dict[str, int], associations: int) -> bool:
        """Once the acceptors have counted `associations` more since `before`: whether
        more than one acceptor took them (with listen.acceptors above 1, the kernel spreads
        new connections by a hash of their addresses and ports)."""
        def counted() -> dict[str, int] | None:
            now = self.accepted_by_acceptor()
            grown = {name: count - before.get(name, 0) for name, count in now.items()}
            return grown if sum(grown.values()) >= associations else None

        assert wait_for(lambda: counted() is not None, timeout=15), self.accepted_by_acceptor()
        grown = counted()
        assert grown is not None
        return sum(1 for count in grown.values() if count > 0) > 1

    def child_pid(self, name: str) -> int:
        """The pid of the newest `name` process (broker, worker-0, acceptor) from the log."""
        found = re.findall(rf"started {re.escape(name)} \(pid (\d+)\)", self.log())
        if not found:
            raise LookupError(f"no {name} started:\n{self.log()[-2000:]}")
        return int(found[-1])

    def kill_all(self) -> None:
        """kill -9 the supervisor and every child at once: a crash, not a stop. By process
        group, never by the pids in the log: one of an earlier start may belong to another
        process by now (pid_max is 32768 here)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def is_child(self, pid: int) -> bool:
        """Whether `pid` is one of this router's live processes right now."""
        return self.process is not None and pid in child_pids(self.process.pid)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _normalise(sample: str) -> str:
    """Sort a sample's labels so that lookups do not depend on the exporter's order."""
    if "{" not in sample:
        return sample
    name, _, rest = sample.partition("{")
    labels = sorted(rest.rstrip("}").split(","))
    return f"{name}{{{','.join(labels)}}}"


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> bool:
    """Poll `predicate` until it is true or `timeout` passes (tests never assert on time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
