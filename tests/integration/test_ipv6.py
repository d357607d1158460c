"""The router over IPv6 (the loopback ::1): Kubernetes clusters and hospital networks that run
IPv6 only or dual stack must reach every port the router serves."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from router.core.acceptor_status import acceptor_snapshots
from tests.dcmtk import LOCALHOST, free_port, run_echoscu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.router_process import ROUTER, RouterProcess, wait_for


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


def _access_points(trail: Path) -> dict[str, set[str]]:
    """Event ID -> the peers' NetworkAccessPointIDs in the audit trail (the router's own
    machine name left out)."""
    points: dict[str, set[str]] = {}
    for line in trail.read_text().splitlines():
        message = json.loads(line)["AuditMessage"]
        event = message["EventIdentification"]["EventID"]["csd-code"]
        for participant in message["ActiveParticipant"]:
            if participant.get("NetworkAccessPointTypeCode") == "2":
                points.setdefault(event, set()).add(participant["NetworkAccessPointID"])
    return points


def _echo_over_ipv6(port: int, calling_ae: str) -> bool:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("::1", port, ae_title="DICOM-ROUTER")
    try:
        return bool(assoc.is_established and assoc.send_c_echo().Status == 0)
    finally:
        assoc.release()


def test_a_dual_stack_listener_logs_and_audits_each_sender_by_its_own_address(
        tmp_path: Path) -> None:
    """listen.host "::": an IPv4 sender is logged and audited as 127.0.0.1, as on a
    "0.0.0.0" listener (not ::ffff:127.0.0.1, which an audit repository searching for
    the node's address would not find), an IPv6 sender as ::1."""
    trail = tmp_path / "audit.jsonl"
    config = {**_folder_config(tmp_path),
              "audit": {"enabled": True, "path": str(trail)},
              "listen": {"host": "::", "allowed_calling_ae": ["CT1"]}}
    with RouterProcess(tmp_path / "router", config) as router:
        assert run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                           calling_ae="CT1").returncode == 0
        assert run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                           calling_ae="INTRUDER").returncode != 0
        assert _echo_over_ipv6(router.port, "CT1")
        assert wait_for(lambda: len(_access_points(trail).get("110114", ())) == 2)
        assert wait_for(lambda: "110113" in _access_points(trail))
    points = _access_points(trail)
    assert points["110114"] == {"127.0.0.1", "::1"}  # the accepted associations
    assert points["110113"] == {"127.0.0.1"}  # the refused calling AE
    assert "rejecting association from INTRUDER (127.0.0.1)" in router.log()
    assert "::ffff:" not in router.log() + trail.read_text()


def test_an_allowed_source_written_ipv4_mapped_admits_its_ipv4_sender(tmp_path: Path) -> None:
    """listen.allowed_sources "::ffff:127.0.0.1" (the form a dual-stack socket reports) on a
    "::" listener: the IPv4 sender it names is admitted, an IPv6 one is not."""
    config = {**_folder_config(tmp_path),
              "listen": {"host": "::", "allowed_sources": ["::ffff:127.0.0.1"]}}
    with RouterProcess(tmp_path / "router", config) as router:
        assert run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                           calling_ae="CT1").returncode == 0
        assert not _echo_over_ipv6(router.port, "CT1")
    assert "source address ::1 is not allowed" in router.log()


def _peers(status: dict[str, Any]) -> list[str]:
    return [a["peer"] for snap in acceptor_snapshots(status).values()
            for a in snap.get("associations", [])]


def test_ipv6_addresses_are_shown_with_their_port_in_brackets(tmp_path: Path) -> None:
    """"::1:40000" is itself an IPv6 address: the live status, `dicom-router status`, the
    acceptor's start line and a destination's failure say "[::1]:40000"."""
    closed = free_port()  # nothing listens there: the destination fails to connect
    config = {"listen": {"host": "::1"},
              "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "::1",
                                        "port": closed}},
              "rules": [{"name": "all", "forward": ["pacs"]}]}
    sample = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    with RouterProcess(tmp_path / "router", config) as router:
        ae = AE(ae_title="CT1")
        ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
        assoc = ae.associate("::1", router.port, ae_title="DICOM-ROUTER")
        try:
            assert assoc.is_established
            assert wait_for(lambda: _peers(router.status()) != [])
            status = router.status()
            screen = subprocess.run(
                [*ROUTER, "status", "--url", f"127.0.0.1:{router.metrics_port}", "--once"],
                capture_output=True, text=True, timeout=60).stdout
            assert assoc.send_c_store(sample).Status == 0
        finally:
            assoc.release()
        assert wait_for(lambda: f"([::1]:{closed})" in router.log())
    port = assoc.local["port"]
    assert _peers(status) == [f"[::1]:{port}"]
    assert status["listen"] == f"[::1]:{router.port}"
    assert f"[::1]:{port}" in screen and f"on [::1]:{router.port}" in screen
    assert f"accepting DICOM associations as DICOM-ROUTER on [::1]:{router.port}" in router.log()
