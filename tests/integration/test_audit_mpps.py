"""Relayed MPPS in the audit trail: a Procedure Record (110111) per N-CREATE (C) and N-SET
(U), written to the JSON lines file by a real router relaying to a pynetdicom RIS, each
valid by the schema (docs/audit.md "Relayed queries and retrieves")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from tests.dcmtk import LOCALHOST
from tests.integration.router_process import RouterProcess, wait_for
from tests.integration.test_audit_forwarded import SCHEMA
from tests.integration.test_relay_nservices import (
    PROCESSING_FAILURE,
    RIS,
    RIS_AE,
    WORKLIST,
    Requester,
    mpps_completed,
    mpps_in_progress,
    status_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def relaying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterProcess, RIS,
                                                                          Path]]:
    """A router relaying MPPS to a RIS, its trail in a JSON lines file."""
    folder = tmp_path_factory.mktemp("mpps-audit")
    ris = RIS(WORKLIST)
    trail = folder / "audit.jsonl"
    config = {
        "audit": {"enabled": True, "path": str(trail)},
        "destinations": {"ris": {"type": "dicom", "ae_title": RIS_AE, "host": LOCALHOST,
                                 "port": ris.port, "dimse_timeout": 15}},
        "rules": [{"name": "mpps", "match": {"sop_class": "ModalityPerformedProcedureStep"},
                   "query": ["ris"]}],
        "request_timeout": 30}
    try:
        with RouterProcess(folder / "router", config) as router:
            yield router, ris, trail
    finally:
        ris.close()


def _records(trail: Path, instance: str, count: int) -> list[dict[str, Any]]:
    """The first `count` Procedure Records naming this MPPS instance, each schema-valid."""
    def mine() -> list[dict[str, Any]]:
        lines = trail.read_text().splitlines() if trail.exists() else []
        return [m for m in (json.loads(line)["AuditMessage"] for line in lines)
                if m["EventIdentification"]["EventID"]["csd-code"] == "110111"
                and any(d.get("MPPS") == [{"UID": instance}]
                        for o in m.get("ParticipantObjectIdentification", [])
                        for d in o.get("ParticipantObjectDescription", []))]
    assert wait_for(lambda: len(mine()) >= count), mine()
    schema = json.loads(SCHEMA.read_text())
    for message in mine():
        jsonschema.validators.validator_for(schema)(schema).validate({"AuditMessage": message})
    return mine()[:count]


def _participants(message: dict[str, Any]) -> dict[str, tuple[str | None, bool]]:
    """UserID: (role code, UserIsRequestor)."""
    return {p["UserID"]: (p["RoleIDCode"][0]["csd-code"] if "RoleIDCode" in p else None,
                          p["UserIsRequestor"]) for p in message["ActiveParticipant"]}


def _objects(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Participant objects by ID type: 110180 the study, 2 the patient."""
    return {o["ParticipantObjectIDTypeCode"]["csd-code"]: o
            for o in message["ParticipantObjectIdentification"]}


def test_an_mpps_create_and_its_completion_are_procedure_records(
        relaying: tuple[RouterProcess, RIS, Path]) -> None:
    router, ris, trail = relaying
    instance, study = generate_uid(), generate_uid()
    images = [generate_uid(), generate_uid()]
    with Requester(router.port, [ModalityPerformedProcedureStep], ae_title="CT01") as scu:
        status, _ = scu.assoc.send_n_create(mpps_in_progress(study),
                                            ModalityPerformedProcedureStep, instance)
        assert status_of(status) == 0x0000
        status, _ = scu.assoc.send_n_set(mpps_completed(generate_uid(), images),
                                         ModalityPerformedProcedureStep, instance)
        assert status_of(status) == 0x0000
    assert ris.mpps[instance].PerformedProcedureStepStatus == "COMPLETED"

    created, completed = _records(trail, instance, 2)
    for record, action in ((created, "C"), (completed, "U")):
        event = record["EventIdentification"]
        assert (event["EventActionCode"], event["EventOutcomeIndicator"]) == (action, "0")
        people = _participants(record)
        assert (people["CT01"], people[RIS_AE]) == (("110153", True), ("110152", False))
    study_object, patient = _objects(created)["110180"], _objects(created)["2"]
    assert (study_object["ParticipantObjectID"], study_object["ParticipantObjectTypeCode"],
            study_object["ParticipantObjectTypeCodeRole"]) == (study, "2", "3")
    assert study_object["ParticipantObjectDescription"][0]["Accession"] == \
        [{"Number": "ACC20240611"}]
    assert (patient["ParticipantObjectID"], patient["ParticipantObjectTypeCode"],
            patient["ParticipantObjectTypeCodeRole"]) == ("PID-7781", "1", "1")
    assert "Müller" not in json.dumps(created) and "M\\u00fcller" not in json.dumps(created)
    # The N-SET carries no patient or study: its MPPS instance joins it to the N-CREATE's.
    objects = _objects(completed)
    assert set(objects) == {"110180"}
    assert objects["110180"]["ParticipantObjectID"] == "unknown"
    assert objects["110180"]["ParticipantObjectDescription"][0]["SOPClass"] == \
        [{"UID": CT_IMAGE, "NumberOfInstances": 2}]


def test_an_mpps_the_upstream_refuses_is_a_serious_failure(
        relaying: tuple[RouterProcess, RIS, Path]) -> None:
    router, ris, trail = relaying
    instance, study = generate_uid(), generate_uid()
    refusal = Dataset()
    refusal.Status = PROCESSING_FAILURE
    refusal.ErrorComment = "unknown scheduled step"
    ris.answers[("N-CREATE", instance)] = (refusal, None)
    with Requester(router.port, [ModalityPerformedProcedureStep], ae_title="CT01") as scu:
        status, _ = scu.assoc.send_n_create(mpps_in_progress(study),
                                            ModalityPerformedProcedureStep, instance)
        assert status_of(status) == PROCESSING_FAILURE
        # An N-SET for a step the RIS does not hold: 0x0112 No Such Object Instance.
        status, _ = scu.assoc.send_n_set(mpps_completed(generate_uid(), []),
                                         ModalityPerformedProcedureStep, instance)
        assert status_of(status) == 0x0112

    created, completed = _records(trail, instance, 2)
    assert (created["EventIdentification"]["EventActionCode"],
            created["EventIdentification"]["EventOutcomeIndicator"]) == ("C", "8")
    assert created["EventIdentification"]["EventOutcomeDescription"] == \
        "N-CREATE; final status 0x0110: unknown scheduled step"
    assert _objects(created)["2"]["ParticipantObjectID"] == "PID-7781"  # refused, yet sent
    assert (completed["EventIdentification"]["EventActionCode"],
            completed["EventIdentification"]["EventOutcomeIndicator"]) == ("U", "8")
    assert completed["EventIdentification"]["EventOutcomeDescription"] == \
        "N-SET; final status 0x0112"
    assert _participants(completed)[RIS_AE] == ("110152", False)


def test_an_mpps_create_names_the_instance_the_upstream_assigned(
        relaying: tuple[RouterProcess, RIS, Path]) -> None:
    """An N-CREATE may leave the instance UID to the SCP: the record names the RIS's."""
    router, ris, trail = relaying
    with Requester(router.port, [ModalityPerformedProcedureStep], ae_title="CT01") as scu:
        status, _ = scu.assoc.send_n_create(mpps_in_progress(generate_uid()),
                                            ModalityPerformedProcedureStep, None)
        assert status_of(status) == 0x0000
    [created] = _records(trail, ris.last("N-CREATE").sop_instance, 1)
    assert created["EventIdentification"]["EventActionCode"] == "C"
