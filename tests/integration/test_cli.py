"""The `dicom-router` command as an operator uses it: check-config, run, stop."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.dcmtk import LOCALHOST, run_echoscu, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.router_process import ROUTER, RouterProcess, http_get, wait_for

pytestmark = pytest.mark.integration


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          check=False)


def test_check_config_prints_a_summary_for_a_good_file(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        "destinations:\n  archive: {type: folder, path: received}\n"
        "rules:\n  - {name: all, forward: [archive]}\n"
    )
    result = _cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: AE DICOM-ROUTER")
    assert "1 destinations, 1 rules" in result.stdout


def test_check_config_lists_every_problem_with_its_key(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        "ae_titel: X\n"
        "listen: {port: 99999}\n"
        "destinations:\n  pacs: {type: dicom, ae_title: PACS, host: h}\n"
        "rules:\n  - {name: ct, match: {tags: {Modalty: CT}}, forward: [pcas]}\n"
    )
    result = _cli("check-config", str(config))
    assert result.returncode == 1
    for expected in ("ae_titel: unknown key", "listen.port:",
                     "destinations.pacs.port: Field required",
                     "rules[0].match.tags: 'Modalty' is not a DICOM keyword",
                     "rules[0].forward: unknown destination 'pcas'"):
        assert expected in result.stderr, result.stderr


def test_run_refuses_a_broken_config_without_starting(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("rules: [}\n")
    result = _cli("run", "--config", str(config))
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_sigterm_stops_every_process_cleanly(tmp_path: Path) -> None:
    router = RouterProcess(tmp_path, {
        "workers": 2,
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    }).start()
    assert router.process is not None
    children = _children(router.process.pid)
    assert len(children) >= 4, children  # broker, 2 workers, acceptor (spawn may add a tracker)

    assert router.stop() == 0, router.log()[-2000:]
    assert wait_for(lambda: not any(_alive(pid) for pid in children), timeout=10)
    assert "router stopped" in router.log()


def test_default_config_receives_on_11112_into_received(tmp_path: Path) -> None:
    """What `make run` does: no config, AE DICOM-ROUTER on 11112, files under ./received."""
    process = subprocess.Popen([*ROUTER, "run"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env={**os.environ})
    try:
        assert wait_for(lambda: _ready(9100), timeout=30), "default router never became ready"
        assert run_echoscu(LOCALHOST, 11112, called_ae="DICOM-ROUTER").returncode == 0
        source = write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                                transfer_syntax=EXPLICIT_VR_LE, study_uid="1.2.3",
                                series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5")
        sent = run_storescu([source], LOCALHOST, 11112, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        target = tmp_path / "received" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
        assert wait_for(target.exists, timeout=30)
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            assert process.wait(30) == 0
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def _ready(port: int) -> bool:
    try:
        return http_get(port, "/readyz")[0] == 200
    except OSError:
        return False


def test_health_endpoints(tmp_path: Path) -> None:
    with RouterProcess(tmp_path, {
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    }) as router:
        assert http_get(router.metrics_port, "/healthz") == (200, "ok\n")
        assert http_get(router.metrics_port, "/readyz") == (200, "ready\n")
        assert http_get(router.metrics_port, "/nope")[0] == 404
        assert "dicom_router_build_info" in router.metrics()


