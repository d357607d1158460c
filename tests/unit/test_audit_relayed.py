"""Relayed query and retrieve records in the cases a real upstream does not easily give: no
rule routed the request, the requester went away, a C-MOVE naming many studies; each valid
by the schema and well-formed XML (docs/audit.md "Relayed queries and retrieves")."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import jsonschema
import pytest

from router.audit.encoding import to_xml
from router.audit.messages import LocalApplication, RemoteNode
from router.audit.relayed import (
    MAX_STUDIES,
    RelayedRequest,
    procedure_record,
    query,
    relayed_outcome,
    retrieve,
)

from .audit_schema import STUDY, assert_valid, schema_validator

APP = LocalApplication(ae_title="DICOM-ROUTER", source_id="DICOM-ROUTER", process_id="42",
                       hostname="router1")
ARCHIVE = RemoteNode("archive", "ARCHIVE", "10.1.0.5")


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    return schema_validator()


def _request(command: str, **fields: Any) -> RelayedRequest:
    values: dict[str, Any] = {
        "command": command, "calling_ae": "ASKER", "called_ae": "DICOM-ROUTER",
        "peer_address": "10.2.0.7", "sop_class_uid": "1.2.840.10008.5.1.4.1.2.2.1",
        "transfer_syntax_uid": "1.2.840.10008.1.2", "identifier": b"\x08\x00\x52\x00",
        "upstream": ARCHIVE, "status": 0}
    return RelayedRequest(**(values | fields))


def _valid(validator: Any, message: dict[str, Any]) -> dict[str, Any]:
    assert_valid(validator, message)
    ET.fromstring(to_xml(message))  # well-formed
    return dict(message["AuditMessage"])


def test_outcomes_follow_the_final_status() -> None:
    assert [relayed_outcome(s) for s in (0x0000, 0xFE00, 0xB000, 0x0001, None,
                                         0xA700, 0xA801, 0xC002)] == \
        ["0", "4", "4", "4", "4", "8", "8", "8"]


def test_a_query_no_rule_routed_names_the_router_as_the_destination(validator: Any) -> None:
    message = _valid(validator, query(APP, _request("C-FIND", upstream=None, status=0xC002,
                                                    comment="no routing rule")))
    requester, router = message["ActiveParticipant"]
    assert (requester["UserID"], requester["RoleIDCode"][0]["csd-code"]) == ("ASKER", "110153")
    assert (router["UserID"], router["RoleIDCode"][0]["csd-code"]) == ("42", "110152")
    assert message["EventIdentification"]["EventOutcomeIndicator"] == "8"
    assert message["EventIdentification"]["EventOutcomeDescription"] == \
        "final status 0xC002: no routing rule"


def test_a_retrieve_whose_requester_went_away_is_a_minor_failure(validator: Any) -> None:
    message = _valid(validator, retrieve(APP, _request("C-GET", status=None, completed=2)))
    assert message["EventIdentification"]["EventOutcomeIndicator"] == "4"
    assert "requester went away" in message["EventIdentification"]["EventOutcomeDescription"]
    [study] = message["ParticipantObjectIdentification"]
    assert study["ParticipantObjectID"] == "unknown"  # the identifier named no study


def test_a_move_of_many_studies_lists_some_and_counts_the_rest(validator: Any) -> None:
    studies = tuple(f"{STUDY}.{n}" for n in range(MAX_STUDIES + 5))
    message = _valid(validator, retrieve(APP, _request(
        "C-MOVE", study_uids=studies, patient_id="P1", completed=7,
        move_destination=RemoteNode("VIEWER", "VIEWER", None))))
    objects = message["ParticipantObjectIdentification"]
    assert [o["ParticipantObjectID"] for o in objects] == [*studies[:MAX_STUDIES], "P1"]
    assert all("ParticipantObjectDescription" not in o for o in objects)  # not per study
    assert "completed 7" in message["EventIdentification"]["EventOutcomeDescription"]
    assert "5 more studies" in message["EventIdentification"]["EventOutcomeDescription"]
    viewer = next(p for p in message["ActiveParticipant"] if p["UserID"] == "VIEWER")
    assert "NetworkAccessPointID" not in viewer  # not in the router's tables


def test_a_procedure_record_gives_each_study_its_accessions(validator: Any) -> None:
    """An MPPS whose scheduled steps name two studies: one object each, with its own
    accession number and the MPPS instance, and the patient by ID."""
    message = _valid(validator, procedure_record(APP, _request(
        "N-CREATE", sop_class_uid="1.2.840.10008.3.1.2.3.3", identifier=None,
        study_uids=(f"{STUDY}.1", f"{STUDY}.2"), patient_id="P1",
        sop_instance_uid=f"{STUDY}.9", accessions=((f"{STUDY}.1", "A1"), (f"{STUDY}.2", "A2")),
        status=0x0110, comment="refused")))
    event = message["EventIdentification"]
    assert (event["EventID"]["csd-code"], event["EventActionCode"],
            event["EventOutcomeIndicator"]) == ("110111", "C", "8")
    first, second, patient = message["ParticipantObjectIdentification"]
    for study, accession in ((first, "A1"), (second, "A2")):
        assert study["ParticipantObjectDescription"] == [{
            "MPPS": [{"UID": f"{STUDY}.9"}], "Accession": [{"Number": accession}],
            "SOPClass": [{"NumberOfInstances": 0}]}]
    assert (patient["ParticipantObjectID"], patient["ParticipantObjectTypeCode"]) == ("P1", "1")


def test_a_procedure_record_the_upstream_took_with_a_warning_is_a_minor_failure(
        validator: Any) -> None:
    """0x0107 and 0x0116 are N-SET/N-CREATE warnings (the record was taken, not all of it),
    not failures; an N-SET names no study, so its MPPS instance goes with "unknown"."""
    for status in (0x0107, 0x0116):
        message = _valid(validator, procedure_record(APP, _request(
            "N-SET", identifier=None, sop_instance_uid=f"{STUDY}.9", status=status)))
        assert message["EventIdentification"]["EventActionCode"] == "U"
        assert message["EventIdentification"]["EventOutcomeIndicator"] == "4"
        [study] = message["ParticipantObjectIdentification"]
        assert study["ParticipantObjectID"] == "unknown"
        assert study["ParticipantObjectDescription"][0]["MPPS"] == [{"UID": f"{STUDY}.9"}]
