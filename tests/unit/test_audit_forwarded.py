"""The forwarded-instance tally: counted in memory, one record per destination, study and
outcome on a flush, destinations named as docs/audit.md says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from router.audit.forwarded import ForwardTally, destination_node
from router.audit.trail import AuditTrail
from router.core.audit_config import AuditConfig
from router.core.config.router import parse_config

from .audit_schema import CT, MR, STUDY, assert_valid, schema_validator


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    return schema_validator()


CONFIG = parse_config({
    "spool": {"path": "/tmp/never-used"},
    "destinations": {
        "pacs": {"type": "dicom", "ae_title": "PACS", "host": "10.1.2.3", "port": 104},
        "web": {"type": "dicomweb", "url": "https://archive.example.org:8443/dicom-web"},
        "disk": {"type": "folder", "path": "/tmp/never-used/out"},
    },
    "rules": [{"name": "all", "forward": ["pacs"]}],
})


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line)["AuditMessage"] for line in path.read_text().splitlines()]


def test_adds_write_nothing_and_a_flush_writes_one_record_per_study_and_outcome(
        tmp_path: Path, validator: Any) -> None:
    path = tmp_path / "audit.jsonl"
    tally = ForwardTally(CONFIG)
    with AuditTrail(AuditConfig(enabled=True, path=path), "ROUTER") as trail:
        for _ in range(1000):
            tally.add("pacs", STUDY, CT, True, "P1")
        tally.add("pacs", STUDY, MR, True, "P1")
        tally.add("pacs", STUDY, CT, False, "P1", "status")
        tally.add("web", STUDY, CT, True, "P1")
        assert not path.exists()  # 1,003 instances, no I/O: counted in memory
        tally.flush(trail)
        tally.flush(trail)  # nothing left: nothing written twice
    records = _lines(path)
    assert len(records) == 3
    for record in records:
        assert_valid(validator, {"AuditMessage": record})
        assert record["EventIdentification"]["EventActionCode"] == "R"
    ok, failed, web = records
    assert ok["ParticipantObjectIdentification"][0]["ParticipantObjectDescription"] == [
        {"SOPClass": [{"UID": CT, "NumberOfInstances": 1000},
                      {"UID": MR, "NumberOfInstances": 1}]}]
    assert failed["EventIdentification"]["EventOutcomeIndicator"] == "4"
    assert failed["EventIdentification"]["EventOutcomeDescription"] == \
        "not delivered: dead letters (status)"
    assert web["ActiveParticipant"][1]["NetworkAccessPointID"] == "archive.example.org"


def test_a_tally_is_due_an_interval_after_its_first_add() -> None:
    tally = ForwardTally(CONFIG, interval=60.0)
    assert not tally.due(1e12)  # nothing counted: never due
    tally.add("pacs", STUDY, CT, True)
    assert not tally.due(0.0)
    assert tally.due(1e12)


def test_destinations_are_named_by_ae_and_host_url_host_or_name() -> None:
    pacs, web, disk = (destination_node(n, CONFIG) for n in ("pacs", "web", "disk"))
    assert (pacs.ae_title, pacs.address) == ("PACS", "10.1.2.3")
    assert (web.ae_title, web.address, web.user_id) == (None, "archive.example.org", "web")
    assert (disk.ae_title, disk.address, disk.user_id) == (None, None, "disk")
    # A destination a reload removed is still named, by its name.
    assert destination_node("gone", CONFIG).user_id == "gone"


def test_de_identified_instances_are_a_record_of_their_own_that_says_anonymized(
        tmp_path: Path, validator: Any) -> None:
    """A destination that got a study both as received and de-identified: two records, the
    de-identified one with Anonymized true, both naming the original study and patient."""
    path = tmp_path / "audit.jsonl"
    tally = ForwardTally(CONFIG)
    with AuditTrail(AuditConfig(enabled=True, path=path), "ROUTER") as trail:
        tally.add("pacs", STUDY, CT, True, "P1")
        tally.add("pacs", STUDY, CT, True, "P1", deidentified=True)
        tally.add("pacs", STUDY, CT, True, "P1", deidentified=True)
        tally.flush(trail)
    records = _lines(path)
    for record in records:
        assert_valid(validator, {"AuditMessage": record})
    described = [(r["ParticipantObjectIdentification"][0]["ParticipantObjectID"],
                  r["ParticipantObjectIdentification"][1]["ParticipantObjectID"],
                  r["ParticipantObjectIdentification"][0]["ParticipantObjectDescription"])
                 for r in records]
    assert described == [
        (STUDY, "P1", [{"SOPClass": [{"UID": CT, "NumberOfInstances": 1}]}]),
        (STUDY, "P1", [{"SOPClass": [{"UID": CT, "NumberOfInstances": 2}],
                        "Anonymized": True}])]
