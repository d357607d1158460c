"""The audit trail as the running router writes it: DICOM audit messages, schema-valid."""

from __future__ import annotations

import json
import signal
import socket
import struct
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation

import router.audit.trail
from router.acceptor.access import hash_passcode
from router.core.log_safety import AUDIT_REPEAT_BUDGET
from tests.dcmtk import LOCALHOST, run_echoscu, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration import pdus
from tests.integration.router_process import RouterProcess, wait_for

pytestmark = pytest.mark.integration

SCHEMA = Path(router.audit.__file__).parent / "schemas" / "audit-message.schema.json"


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _event_id(message: dict[str, Any]) -> str:
    return str(message["AuditMessage"]["EventIdentification"]["EventID"]["csd-code"])


def _audited_config(tmp_path: Path, trail: Path) -> dict[str, Any]:
    """A router that audits to `trail`, lets CT1 in and keeps what it gets in a folder."""
    return {
        "audit": {"enabled": True, "path": str(trail)},
        "listen": {"allowed_calling_ae": ["CT1"]},
        "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
    }


def test_router_writes_schema_valid_audit_messages(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    config = _audited_config(tmp_path, trail)
    studies = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE, study_uid=f"1.2.3.{n}",
                              tags={"PatientID": f"P{n}"}) for n in (1, 1, 2)]
    with RouterProcess(tmp_path / "r", config) as router:
        # Both sinks' loss counters exist at 0 before any loss: the alert's increase() needs
        # a sample to start from (ops/prometheus/alerts.yml).
        samples = router.metrics().splitlines()
        for sink in ("file", "syslog"):
            assert f'dicom_router_audit_failures_total{{sink="{sink}"}} 0.0' in samples
        assert run_storescu(studies, LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                            calling_ae="CT1").returncode == 0
        assert run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                           calling_ae="INTRUDER").returncode != 0
        # One "instances transferred" per study, when the association ends.
        assert wait_for(lambda: [_event_id(m) for m in _events(trail)].count("110104") == 2)
    messages = _events(trail)
    ids = [_event_id(m) for m in messages]
    assert ids.count("110100") == 2  # application start and stop
    assert "110114" in ids  # the accepted association (user authentication / login)
    assert "110113" in ids  # security alert: the intruder's calling AE

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    for message in messages:
        validator.validate(message)
    transferred = [m for m in messages if _event_id(m) == "110104"]
    text = json.dumps(transferred)
    assert "1.2.3.1" in text and "1.2.3.2" in text
    assert "INTRUDER" in json.dumps([m for m in messages if _event_id(m) == "110113"])
    assert "P1" not in router.log()  # patient IDs go to the audit trail, never the log


def test_instances_of_an_association_aborted_at_stop_are_audited(tmp_path: Path) -> None:
    """Past drain_grace the stop aborts the association: what it was answered Success for is
    still in the trail (the stop waits for the association to settle before closing it)."""
    trail = tmp_path / "audit.jsonl"
    config = {
        "audit": {"enabled": True, "path": str(trail)},
        "drain_grace": 0.5,
        "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
    }
    source = tmp_path / "src"
    paths = [write_instance(source, sop_class=CTImageStorage, transfer_syntax=EXPLICIT_VR_LE,
                            study_uid="1.2.3.9") for _ in range(3)]
    with RouterProcess(tmp_path / "r", config) as router:
        ae = AE(ae_title="CT1")
        ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
        assoc = ae.associate(LOCALHOST, router.port, ae_title="DICOM-ROUTER")
        assert assoc.is_established
        try:
            assert [assoc.send_c_store(p).Status for p in paths] == [0, 0, 0]
            assert router.stop() == 0  # the association is still open
        finally:
            assoc.abort()
    # Received (action C); the worker's records of what it sent on (R) count them again.
    transferred = [m for m in _events(trail) if _event_id(m) == "110104"
                   and m["AuditMessage"]["EventIdentification"]["EventActionCode"] == "C"]
    counts = [c["NumberOfInstances"] for m in transferred
              for o in m["AuditMessage"]["ParticipantObjectIdentification"]
              if o["ParticipantObjectID"] == "1.2.3.9"
              for c in o["ParticipantObjectDescription"][0]["SOPClass"]]
    assert sum(counts) == 3


def _alerts(path: Path, text: str) -> list[dict[str, Any]]:
    return [m for m in _events(path) if _event_id(m) == "110113" and text in json.dumps(m)]


def test_a_refused_user_identity_is_a_failed_login_naming_the_user(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    config = {
        "audit": {"enabled": True, "path": str(trail)},
        "listen": {"users": [{"username": "dr.smith",
                              "passcode_hash": hash_passcode("right-passcode")}]},
        "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
    }
    with RouterProcess(tmp_path / "r", config) as router:
        ae = AE(ae_title="WORKSTATION")
        ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
        assoc = ae.associate(LOCALHOST, router.port, ae_title="DICOM-ROUTER",
                             ext_neg=[_identity(b"dr.smith\n", b"wrong-passcode")])
        assert assoc.is_rejected
        assert wait_for(lambda: len(_events(trail)) >= 2)
    refused = [m for m in _events(trail) if _event_id(m) == "110114"
               and m["AuditMessage"]["EventIdentification"]["EventOutcomeIndicator"] == "4"]
    assert len(refused) == 1
    users = [p["UserID"] for p in refused[0]["AuditMessage"]["ActiveParticipant"]
             if p["UserIsRequestor"]]
    assert users == ["dr.smith"]  # text-cleaned: the newline is gone
    assert "wrong-passcode" not in trail.read_text()
    assert not _alerts(trail, "user identity")  # no Node Authentication alert instead


def _identity(user: bytes, passcode: bytes) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = user
    item.secondary_field = passcode
    return item


def test_a_malformed_association_request_is_a_rate_limited_security_alert(
    tmp_path: Path,
) -> None:
    """A calling AE with non-ASCII bytes: the request is aborted, and the trail says so (a
    few times a minute per peer, however often it is sent)."""
    trail = tmp_path / "audit.jsonl"
    config = {
        "audit": {"enabled": True, "path": str(trail)},
        "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
    }
    header = struct.pack(">HH", 1, 0) + b"DICOM-ROUTER".ljust(16) + b"CT\xe9<&>".ljust(16)
    request = pdus.pdu(0x01, header + b"\0" * 32 + b"".join(pdus.associate_rq_items()))
    with RouterProcess(tmp_path / "r", config) as router:
        for _ in range(8):
            with socket.create_connection((LOCALHOST, router.port), timeout=10) as sock:
                sock.sendall(request)
                assert pdus.read_pdu(sock)[0] in (0x03, 0x07)  # A-ASSOCIATE-RJ or A-ABORT
        assert wait_for(lambda: _alerts(trail, "malformed association request"))
    alerts = _alerts(trail, "malformed association request")
    assert 1 <= len(alerts) <= AUDIT_REPEAT_BUDGET


def _changes(trail: Path) -> list[dict[str, Any]]:
    return [m["AuditMessage"]["EventIdentification"] for m in _events(trail)
            if _event_id(m) == "110113"]


def test_an_applied_reload_is_audited_as_a_configuration_change(tmp_path: Path) -> None:
    """Security configuration changed when who may connect changed, software configuration
    changed otherwise; the changed keys are named, never their values."""
    trail = tmp_path / "audit.jsonl"
    config = _audited_config(tmp_path, trail)
    with RouterProcess(tmp_path / "r", config) as router:
        assert router.process is not None
        for section, key, value in (("listen", "allowed_calling_ae", ["CT1", "SECRET-AE"]),
                                    (None, "drain_grace", 7)):
            written = yaml.safe_load(router.config_path.read_text())  # with its ports
            (written[section] if section else written)[key] = value
            router.config_path.write_text(yaml.safe_dump(written))
            before = _changes(trail)
            router.process.send_signal(signal.SIGHUP)
            assert wait_for(lambda b=before: len(_changes(trail)) == len(b) + 1, timeout=60)
    changes = _changes(trail)
    assert [(e["EventTypeCode"][0]["csd-code"], e["EventOutcomeDescription"])
            for e in changes] == [
        ("110129", "config reloaded; changed keys: listen.allowed_calling_ae"),
        ("110131", "config reloaded; changed keys: drain_grace"),
    ]
    assert "SECRET-AE" not in trail.read_text()
