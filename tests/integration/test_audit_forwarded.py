"""What the router sent on, in the audit trail: DICOM Instances Transferred (action R) per
destination and study, to a real rsyslog, from a real router delivering to a storescp
without --fork (docs/audit.md "Instances sent on")."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydicom.uid import CTImageStorage

import router.audit.trail
from tests.dcmtk import LOCALHOST, free_port, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.router_process import wait_for
from tests.integration.test_audit_syslog import Rsyslog

pytestmark = pytest.mark.integration

SCHEMA = Path(router.audit.__file__).parent / "schemas" / "audit-message.schema.json"
PRIVATE = "1.2.826.0.1.3680043.10.777.1"  # storescp refuses it: a dead letter


def _sent_on(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["AuditMessage"] for m in messages
            if m["AuditMessage"]["EventIdentification"]["EventID"]["csd-code"] == "110104"
            and m["AuditMessage"]["EventIdentification"]["EventActionCode"] == "R"]


def _canonical(message: dict[str, Any]) -> str:
    return json.dumps(message, sort_keys=True)


def _objects(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Its participant objects by type: "2" the study, "1" the patient."""
    return {o["ParticipantObjectTypeCode"]: o for o in message["ParticipantObjectIdentification"]}


def test_instances_sent_on_and_dead_letters_are_audited_per_destination_and_study(
        start_router: RouterFactory, storescp: Any, tmp_path: Path) -> None:
    pacs = storescp("PACS")
    (tmp_path / "rsyslog").mkdir()
    syslog = Rsyslog(tmp_path / "rsyslog", "tcp", free_port()).start()
    try:
        trail = tmp_path / "audit.jsonl"
        router = start_router({
            "audit": {"enabled": True, "path": str(trail),
                      "syslog": {"host": LOCALHOST, "port": syslog.port, "transport": "tcp"}},
            "listen": {"extra_storage_classes": [PRIVATE]},
            "destinations": {"pacs": dicom_destination(pacs)},
            "rules": [{"name": "all", "forward": ["pacs"]}]})
        source = tmp_path / "src"
        sent = [write_instance(source, sop_class=CTImageStorage, transfer_syntax=EXPLICIT_VR_LE,
                               size_bytes=2000, study_uid="1.2.3.1", tags={"PatientID": "P1"})
                for _ in range(5)]
        sent.append(write_instance(source, sop_class=CTImageStorage, size_bytes=2000,
                                   transfer_syntax=EXPLICIT_VR_LE, study_uid="1.2.3.2",
                                   tags={"PatientID": "P2"}))
        sent.append(write_instance(source, sop_class=PRIVATE, transfer_syntax=EXPLICIT_VR_LE,
                                   size_bytes=2000, study_uid="1.2.3.3",
                                   tags={"PatientID": "P3"}))
        assert run_storescu(sent, LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                            calling_ae="CT1").returncode == 0
        assert wait_for(lambda: len(pacs.received_files()) == 6
                        and router.metric("dicom_router_dead_letters_total", destination="pacs",
                                          reason="no_context") == 1), router.log()[-2000:]
        # Counted in memory, written every 60 s: nothing yet, not one line per instance.
        assert _sent_on([json.loads(line) for line in trail.read_text().splitlines()]) == []
        assert router.stop() == 0  # the worker and the broker flush what they counted
        # Per process: two workers that each delivered some of a study write a record each.
        assert wait_for(lambda: _instances(_sent_on([json.loads(r["msg"]) for r in
                                                     syslog.received(0)])) == 7), \
            syslog.received(0)
        messages = [json.loads(r["msg"]) for r in syslog.received(0)]
    finally:
        syslog.stop()

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    for message in messages:
        validator.validate(message)
    forwarded = _sent_on(messages)
    # The same records in both; their order is per process (the broker and two workers
    # write their own, and syslog and the file interleave them differently).
    assert sorted(map(_canonical, forwarded)) == sorted(
        map(_canonical, _sent_on([json.loads(line) for line in trail.read_text().splitlines()])))
    by_study: dict[str, list[dict[str, Any]]] = {}
    for message in forwarded:
        by_study.setdefault(_objects(message)["2"]["ParticipantObjectID"], []).append(message)
    assert sorted(by_study) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    counts = {uid: sum((_classes(m) for m in ms), Counter()) for uid, ms in by_study.items()}
    assert counts == {"1.2.3.1": {CTImageStorage: 5}, "1.2.3.2": {CTImageStorage: 1},
                      "1.2.3.3": {PRIVATE: 1}}
    outcomes = {uid: {m["EventIdentification"]["EventOutcomeIndicator"] for m in ms}
                for uid, ms in by_study.items()}
    assert outcomes == {"1.2.3.1": {"0"}, "1.2.3.2": {"0"}, "1.2.3.3": {"4"}}
    assert len(by_study["1.2.3.3"]) == 1  # the broker's, for the dead letter
    assert "dead letters (no_context)" in \
        by_study["1.2.3.3"][0]["EventIdentification"]["EventOutcomeDescription"]
    for n in range(3):
        for message in by_study[f"1.2.3.{n + 1}"]:
            patient = _objects(message)["1"]
            assert (patient["ParticipantObjectID"], patient["ParticipantObjectTypeCodeRole"]) \
                == (f"P{n + 1}", "1")
            source_role, destination_role = message["ActiveParticipant"]
            # The router is the source and the requestor; the destination names its AE, host.
            assert source_role["RoleIDCode"][0]["csd-code"] == "110153"
            assert source_role["UserIsRequestor"] is True
            assert source_role["AlternativeUserID"] == "AETITLES=DICOM-ROUTER"
            assert destination_role["RoleIDCode"][0]["csd-code"] == "110152"
            assert destination_role["UserIsRequestor"] is False
            assert (destination_role["UserID"], destination_role["AlternativeUserID"],
                    destination_role["NetworkAccessPointID"],
                    destination_role["NetworkAccessPointTypeCode"]) == \
                ("PACS", "AETITLES=PACS", "127.0.0.1", "2")


def _classes(message: dict[str, Any]) -> Counter[str]:
    """A record's instances per SOP class."""
    return Counter({c["UID"]: c["NumberOfInstances"] for c in
                    _objects(message)["2"]["ParticipantObjectDescription"][0]["SOPClass"]})


def _instances(messages: list[dict[str, Any]]) -> int:
    return sum(sum(_classes(m).values()) for m in messages)


def test_a_de_identified_destination_s_record_names_the_original_study_and_says_anonymized(
        start_router: RouterFactory, storescp: Any, tmp_path: Path) -> None:
    """One study to pacs as received and to research de-identified: research's record named
    patient P1's study exactly as pacs's did, a disclosure of identified data on its face.
    It keeps the original study and patient (whose data it was: the privacy office must find
    the research copy from them) and says Anonymized, as the DICOM audit schema provides."""
    pacs, research = storescp("PACS"), storescp("RESEARCH")
    trail = tmp_path / "audit.jsonl"
    router = start_router({
        "audit": {"enabled": True, "path": str(trail)},
        "destinations": {"pacs": dicom_destination(pacs),
                         "research": dicom_destination(research)},
        "rules": [{"name": "all", "forward": ["pacs"], "continue": True},
                  {"name": "study", "forward": ["research"], "deidentify": {}}]})
    sent = [write_instance(tmp_path / "src", sop_class=CTImageStorage, size_bytes=2000,
                           transfer_syntax=EXPLICIT_VR_LE, study_uid="1.2.3.1",
                           tags={"PatientID": "P1"}) for _ in range(2)]
    assert run_storescu(sent, LOCALHOST, router.port, called_ae="DICOM-ROUTER").returncode == 0
    assert wait_for(lambda: len(pacs.received_files()) == 2
                    and len(research.received_files()) == 2), router.log()[-2000:]
    assert router.stop() == 0  # the worker flushes what it counted
    forwarded = _sent_on([json.loads(line) for line in trail.read_text().splitlines()])
    by_destination = {m["ActiveParticipant"][1]["UserID"]: _objects(m) for m in forwarded}
    assert sorted(by_destination) == ["PACS", "RESEARCH"]
    for name, anonymized in (("PACS", None), ("RESEARCH", True)):
        study, patient = by_destination[name]["2"], by_destination[name]["1"]
        assert (study["ParticipantObjectID"], patient["ParticipantObjectID"]) == ("1.2.3.1", "P1")
        description = study["ParticipantObjectDescription"][0]
        assert description.get("Anonymized") is anonymized
        assert description["SOPClass"] == [{"UID": CTImageStorage, "NumberOfInstances": 2}]
