"""Relayed queries and retrieves in the audit trail: a Query (110112) per C-FIND and a DICOM
Instances Transferred (110104, R) per C-GET and C-MOVE, received by a real rsyslog from a
real router relaying to a real archive (DCMTK dcmqrscp), asked by findscu, getscu and
movescu (docs/audit.md "Relayed queries and retrieves")."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dsutils import decode

from tests.archive_servers import Dcmqrscp
from tests.dcmtk import LOCALHOST, StoreSCP, free_port
from tests.integration.router_process import RouterProcess, wait_for
from tests.integration.test_audit_forwarded import SCHEMA
from tests.integration.test_audit_syslog import Rsyslog
from tests.qr_tools import run_findscu, run_getscu, run_movescu
from tests.study_set import StudySet, make_study_set

pytestmark = pytest.mark.integration

ROUTER_AE = "DICOM-ROUTER"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> StudySet:
    return make_study_set(tmp_path_factory.mktemp("studies"), patients=1, studies_per_patient=2,
                          series_per_study=1, instances_per_series=3, implicit_series=0)


@pytest.fixture(scope="module")
def relaying(tmp_path_factory: pytest.TempPathFactory, studies: StudySet, viewer: StoreSCP
             ) -> Iterator[tuple[RouterProcess, Rsyslog, Dcmqrscp]]:
    """A router relaying C-FIND/C-GET and relay-mode C-MOVE to dcmqrscp, its trail to rsyslog."""
    port = free_port()
    folder = tmp_path_factory.mktemp("relayed-audit")
    (folder / "rsyslog").mkdir()
    with Dcmqrscp(folder / "archive", studies, "ARCHIVE",
                  move_destinations=[(ROUTER_AE, LOCALHOST, port)]) as archive:
        syslog = Rsyslog(folder / "rsyslog", "tcp", free_port()).start()
        router = RouterProcess(folder / "router", {
            "audit": {"enabled": True, "path": str(folder / "audit.jsonl"),
                      "syslog": {"host": LOCALHOST, "port": syslog.port, "transport": "tcp"}},
            "destinations": {"archive": {"type": "dicom", "ae_title": "ARCHIVE",
                                         "host": LOCALHOST, "port": archive.port,
                                         "move_mode": "relay", "dimse_timeout": 15}},
            "known_aes": {"VIEWER": {"host": LOCALHOST, "port": viewer.port}},
            "rules": [{"name": "qr", "query": ["archive"]}],
            "request_timeout": 30}, port=port)
        try:
            yield router.start(), syslog, archive
        finally:
            router.stop()
            syslog.stop()


def _records(syslog: Rsyslog, event: str, action: str, count: int) -> list[dict[str, Any]]:
    """The first `count` messages of this EventID and action that rsyslog received, each
    valid by the schema."""
    def mine() -> list[dict[str, Any]]:
        return [m["AuditMessage"] for m in (json.loads(r["msg"]) for r in syslog.received(0))
                if (m["AuditMessage"]["EventIdentification"]["EventID"]["csd-code"],
                    m["AuditMessage"]["EventIdentification"]["EventActionCode"]) ==
                (event, action)]
    assert wait_for(lambda: len(mine()) >= count), mine()
    schema = json.loads(SCHEMA.read_text())
    for message in mine():
        jsonschema.validators.validator_for(schema)(schema).validate({"AuditMessage": message})
    return mine()[:count]


def _participant(message: dict[str, Any], user_id: str) -> dict[str, Any]:
    [found] = [p for p in message["ActiveParticipant"] if p["UserID"] == user_id]
    return found


def _role(participant: dict[str, Any]) -> str | None:
    return participant["RoleIDCode"][0]["csd-code"] if "RoleIDCode" in participant else None


def test_a_relayed_c_find_is_audited_as_a_query_with_its_identifier(
        relaying: tuple[RouterProcess, Rsyslog, Dcmqrscp], studies: StudySet) -> None:
    router, syslog, _ = relaying
    patient = studies.patients[0].patient_id
    found = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY",
                        {"PatientID": patient, "StudyInstanceUID": ""}, calling_ae="ASKER")
    assert len(found) == 2
    # Refused by the upstream: dcmqrscp knows no such query level.
    run_findscu(LOCALHOST, router.port, ROUTER_AE, "NOSUCHLEVEL", {"PatientID": patient},
                calling_ae="ASKER", check=False)
    # A list of 200 UIDs: the identifier is longer than the trail keeps.
    many = "\\".join(f"1.2.826.0.1.3680043.8.498.{n}" for n in range(200))
    run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", {"StudyInstanceUID": many},
                calling_ae="ASKER", check=False)

    ok, refused, cut = _records(syslog, "110112", "E", 3)
    for query in (ok, refused, cut):
        asker, archive = _participant(query, "ASKER"), _participant(query, "ARCHIVE")
        assert (_role(asker), asker["UserIsRequestor"], asker["NetworkAccessPointID"]) == \
            ("110153", True, "127.0.0.1")
        assert (_role(archive), archive["UserIsRequestor"], archive["AlternativeUserID"],
                archive["NetworkAccessPointID"]) == \
            ("110152", False, "AETITLES=ARCHIVE", "127.0.0.1")
        [sop] = query["ParticipantObjectIdentification"]
        assert (sop["ParticipantObjectIDTypeCode"]["csd-code"], sop["ParticipantObjectID"],
                sop["ParticipantObjectTypeCode"], sop["ParticipantObjectTypeCodeRole"]) == \
            ("110181", STUDY_FIND, "2", "3")
        details = {d["type"]: base64.b64decode(d["value"]).decode()
                   for d in sop["ParticipantObjectDetail"]}
        assert details["TransferSyntax"].startswith("1.2.840.10008.1.2")
    assert ok["EventIdentification"]["EventOutcomeIndicator"] == "0"
    [sop] = ok["ParticipantObjectIdentification"]
    syntax = base64.b64decode(sop["ParticipantObjectDetail"][0]["value"]).decode()
    identifier = decode(BytesIO(base64.b64decode(sop["ParticipantObjectQuery"])),
                        syntax == ImplicitVRLittleEndian, True)
    assert (identifier.PatientID, identifier.QueryRetrieveLevel) == (patient, "STUDY")
    assert "QueryCut" not in {d["type"] for d in sop["ParticipantObjectDetail"]}
    assert refused["EventIdentification"]["EventOutcomeIndicator"] == "8"
    assert "final status 0x" in refused["EventIdentification"]["EventOutcomeDescription"]
    [sop] = cut["ParticipantObjectIdentification"]
    assert len(base64.b64decode(sop["ParticipantObjectQuery"])) == 4096
    details = {d["type"]: base64.b64decode(d["value"]).decode()
               for d in sop["ParticipantObjectDetail"]}
    assert details["QueryCut"].startswith("the first 4096 of ")


def test_relayed_c_get_and_c_move_are_audited_as_instances_transferred(
        relaying: tuple[RouterProcess, Rsyslog, Dcmqrscp], studies: StudySet,
        viewer: StoreSCP, tmp_path: Path) -> None:
    router, syslog, _ = relaying
    first, second = studies.studies
    got = run_getscu(LOCALHOST, router.port, ROUTER_AE, "STUDY",
                     {"StudyInstanceUID": first.study_instance_uid}, tmp_path / "got",
                     calling_ae="GETTER")
    assert len(got) == len(first.instances)
    moved = run_movescu(LOCALHOST, router.port, ROUTER_AE, "STUDY",
                        {"StudyInstanceUID": second.study_instance_uid}, "VIEWER",
                        calling_ae="MOVER")
    assert moved.ok, moved.output
    nowhere = run_movescu(LOCALHOST, router.port, ROUTER_AE, "STUDY",
                          {"StudyInstanceUID": second.study_instance_uid}, "NOBODY",
                          calling_ae="MOVER", check=False)
    assert not nowhere.ok

    get, move, refused = _records(syslog, "110104", "R", 3)
    for message, study in ((get, first), (move, second), (refused, second)):
        [obj] = message["ParticipantObjectIdentification"]
        assert (obj["ParticipantObjectIDTypeCode"]["csd-code"], obj["ParticipantObjectID"]) == \
            ("110180", study.study_instance_uid)
        archive = _participant(message, "ARCHIVE")
        assert (_role(archive), archive["UserIsRequestor"], archive["NetworkAccessPointID"]) == \
            ("110153", False, "127.0.0.1")

    # C-GET: the requester receives the instances and asked for them.
    getter = _participant(get, "GETTER")
    assert (_role(getter), getter["UserIsRequestor"]) == ("110152", True)
    assert get["EventIdentification"]["EventOutcomeIndicator"] == "0"
    [obj] = get["ParticipantObjectIdentification"]
    assert obj["ParticipantObjectDescription"] == \
        [{"SOPClass": [{"NumberOfInstances": len(first.instances)}]}]
    assert f"completed {len(first.instances)}, failed 0, warning 0" in \
        get["EventIdentification"]["EventOutcomeDescription"]

    # C-MOVE: the move destination receives; the requester asked.
    for message in (move, refused):
        target, mover = _participant(message, "VIEWER" if message is move else "NOBODY"), \
            _participant(message, "MOVER")
        assert (_role(target), target["UserIsRequestor"]) == ("110152", False)
        assert (_role(mover), mover["UserIsRequestor"]) == (None, True)
    assert _participant(move, "VIEWER")["NetworkAccessPointID"] == "127.0.0.1"
    assert move["EventIdentification"]["EventOutcomeIndicator"] == "0"
    assert f"completed {len(second.instances)}, failed 0" in \
        move["EventIdentification"]["EventOutcomeDescription"]
    assert refused["EventIdentification"]["EventOutcomeIndicator"] == "8"
    assert "0xA801" in refused["EventIdentification"]["EventOutcomeDescription"]
