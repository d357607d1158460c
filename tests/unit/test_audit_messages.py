"""The audit messages: valid against the DICOM audit schema, their codes, their XML form."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from router.audit import codes, encoding, messages
from router.audit.messages import LocalApplication
from router.audit.operator import config_change, operator_action

from .audit_schema import CT, MR, STUDY, assert_valid, schema_validator


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    return schema_validator()


APP = LocalApplication(ae_title="ROUTER", source_id="ROUTER", site_id="Radiology  Dept")

BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "application_started": lambda: messages.application_activity(APP, started=True),
    "application_stopped": lambda: messages.application_activity(APP, started=False),
    "association_accepted": lambda: messages.user_authentication(
        APP, calling_ae="MODALITY", called_ae="ROUTER", peer_address="192.0.2.10"),
    "association_accepted_tls": lambda: messages.user_authentication(
        APP, calling_ae="MODALITY", called_ae="OTHER AE", peer_address="2001:db8::7",
        tls_certificate="CN=modality.example,O=Hospital; issuer=CN=Site CA; sha256=0A:1B"),
    "association_refused_congestion": lambda: messages.user_authentication(
        APP, calling_ae="MODALITY", called_ae="ROUTER", peer_address="192.0.2.10",
        outcome="4", description="association rejected: temporary congestion"),
    "user_identity_refused": lambda: messages.user_authentication(
        APP, calling_ae="WORKSTATION", called_ae="ROUTER", peer_address="192.0.2.10",
        outcome="4", description="user identity refused", user="dr.smith"),
    "security_alert_no_peer": lambda: messages.security_alert(
        APP, alert_type=codes.SOFTWARE_CONFIGURATION, detail="config reloaded",
        peer_address=None),
    "instances_transferred": lambda: messages.instances_transferred(
        APP, calling_ae="MODALITY", called_ae="ROUTER", peer_address="192.0.2.10",
        study_uid=STUDY, sop_classes={CT: 120, MR: 3}, outcome_ok=True),
    "instances_transferred_failed_with_patient": lambda: messages.instances_transferred(
        APP, calling_ae="MODALITY", called_ae="ROUTER", peer_address="pacs.example",
        study_uid=STUDY, sop_classes={CT: 2}, outcome_ok=False, patient_id="PID 0001"),
    "hostile_text": lambda: messages.instances_transferred(
        APP, calling_ae="EVIL\n AE\t", called_ae="ROUTER  X", peer_address=" 10.0.0.1 ",
        study_uid="1.2\n.3  4", sop_classes={"1.2 3": 1}, outcome_ok=False,
        description="bad\x00 \u00e9\u2028</x>" * 500),
}


def _alert(code: codes.Code) -> Callable[[], dict[str, Any]]:
    return lambda: messages.security_alert(
        APP, alert_type=code, detail="peer certificate expired", peer_address="10.1.2.3",
        calling_ae="MODALITY")


BUILDERS.update({
    "operator_action": lambda: operator_action(
        APP, user="local:alice", address="127.0.0.1", action="pause pacs",
        detail="pacs paused; 3 job(s) queued for it", ok=True),
    "config_change": lambda: config_change(APP, ["listen.users", "rules"]),
    "operator_refused": lambda: operator_action(
        APP, user="?", address="2001:db8::1", action="access", detail="wrong bearer token",
        ok=False, refused_access=True),
})
BUILDERS.update({f"security_alert_{kind}": _alert(c) for kind, c in codes.ALERT_TYPES.items()})


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_builder_validates_against_the_schema(validator: Any, name: str) -> None:
    message = BUILDERS[name]()
    assert_valid(validator, message)
    assert_valid(validator, json.loads(encoding.to_json_line(message)))


def test_schema_rejects_what_the_dicom_schema_rejects(validator: Any) -> None:
    good = BUILDERS["instances_transferred"]()
    assert validator.is_valid(good)
    broken: list[Callable[[dict[str, Any]], None]] = [
        lambda m: m["AuditMessage"]["EventIdentification"].pop("EventID"),
        lambda m: m["AuditMessage"]["EventIdentification"].update(EventOutcomeIndicator="1"),
        lambda m: m["AuditMessage"]["EventIdentification"].update(EventActionCode="X"),
        lambda m: m["AuditMessage"]["EventIdentification"].update(
            EventDateTime="2024-01-01T00:00:00"),  # A.5.2.5: the time zone is required
        lambda m: m["AuditMessage"].update(ActiveParticipant=[]),
        lambda m: m["AuditMessage"]["ActiveParticipant"][0].pop("UserIsRequestor"),
        lambda m: m["AuditMessage"]["ActiveParticipant"][0].update(UserIsRequestor="true"),
        lambda m: m["AuditMessage"]["AuditSourceIdentification"].pop("AuditSourceID"),
        lambda m: m["AuditMessage"]["ParticipantObjectIdentification"][0].update(
            ParticipantObjectID="two  spaces"),  # not an xsd:token
        lambda m: m["AuditMessage"]["ParticipantObjectIdentification"][0].update(
            ParticipantObjectName="n", ParticipantObjectQuery="cQ=="),
        lambda m: m["AuditMessage"]["ParticipantObjectIdentification"][0].update(
            ParticipantObjectTypeCodeRole="27"),
        lambda m: m["AuditMessage"].update(Extra=1),
    ]
    for index, breaking in enumerate(broken):
        message = json.loads(json.dumps(good))
        breaking(message)
        assert not validator.is_valid(message), f"broken message {index} passed"


def test_instances_transferred_follows_a_5_3_7() -> None:
    message = BUILDERS["instances_transferred_failed_with_patient"]()["AuditMessage"]
    event = message["EventIdentification"]
    assert event["EventID"]["csd-code"] == "110104"
    assert (event["EventActionCode"], event["EventOutcomeIndicator"]) == ("C", "4")
    source, destination = message["ActiveParticipant"]
    assert source["RoleIDCode"][0]["csd-code"] == "110153"
    assert source["UserIsRequestor"] is True and source["AlternativeUserID"] == "AETITLES=MODALITY"
    assert destination["RoleIDCode"][0]["csd-code"] == "110152"
    study, patient = message["ParticipantObjectIdentification"]
    assert study["ParticipantObjectIDTypeCode"]["csd-code"] == "110180"
    assert (study["ParticipantObjectTypeCode"], study["ParticipantObjectTypeCodeRole"]) == (
        "2", "3")
    assert study["ParticipantObjectDescription"][0]["SOPClass"] == [
        {"UID": CT, "NumberOfInstances": 2}]
    assert patient["ParticipantObjectID"] == "PID 0001"
    assert "ParticipantObjectName" not in patient  # never the patient's name


def test_codes_of_each_event() -> None:
    def codes(name: str) -> tuple[str, list[str]]:
        event = BUILDERS[name]()["AuditMessage"]["EventIdentification"]
        return event["EventID"]["csd-code"], [c["csd-code"] for c in event.get(
            "EventTypeCode", [])]

    assert codes("application_started") == ("110100", ["110120"])
    assert codes("application_stopped") == ("110100", ["110121"])
    assert codes("association_accepted") == ("110114", ["110122"])
    assert codes("association_refused_congestion") == ("110114", ["110122"])
    assert codes("security_alert_bad_certificate") == ("110113", ["110126"])
    assert codes("security_alert_denied_ae") == ("110113", ["110126"])
    assert codes("security_alert_restricted_function") == ("110113", ["110132"])


def test_security_alert_carries_the_alert_description() -> None:
    message = BUILDERS["security_alert_bad_certificate"]()["AuditMessage"]
    subject = message["ParticipantObjectIdentification"][0]
    assert subject["ParticipantObjectIDTypeCode"]["csd-code"] == "110182"
    assert subject["ParticipantObjectID"] == "10.1.2.3"
    (detail,) = subject["ParticipantObjectDetail"]
    assert detail["type"] == "Alert Description"
    assert base64.b64decode(detail["value"]).decode() == "peer certificate expired"
    assert all(p["UserIsRequestor"] is False for p in message["ActiveParticipant"])


def test_xml_form_keeps_everything() -> None:
    message = BUILDERS["instances_transferred_failed_with_patient"]()
    root = ET.fromstring(encoding.to_xml(message))
    assert root.tag == "AuditMessage"
    assert [c.tag for c in root] == [
        "EventIdentification", "ActiveParticipant", "ActiveParticipant",
        "AuditSourceIdentification", "ParticipantObjectIdentification",
        "ParticipantObjectIdentification"]
    event = root.find("EventIdentification")
    assert event is not None and event.get("EventOutcomeIndicator") == "4"
    assert [c.tag for c in event] == ["EventID", "EventOutcomeDescription"]
    sop = root.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
    assert sop is not None and sop.attrib == {"UID": CT, "NumberOfInstances": "2"}
    assert root.find("ActiveParticipant").get("UserIsRequestor") == "true"  # type: ignore[union-attr]
    # The hostile message is still well-formed XML.
    ET.fromstring(encoding.to_xml(BUILDERS["hostile_text"]()))


def test_control_characters_of_a_peers_ae_title_never_reach_an_audit_record() -> None:
    """A calling AE of ESC, NUL and BEL went into AlternativeUserID as they were: an xterm
    escape in the syslog stream, and XML that a record repository could not parse."""
    message = messages.security_alert(
        APP, alert_type=codes.NODE_AUTHENTICATION, detail="calling AE not allowed",
        peer_address="10.0.0.1", calling_ae="CT1\x1b]0;pwn\x07\x00")
    xml = encoding.to_xml(message)
    root = ET.fromstring(xml)  # well-formed
    json_line = encoding.to_json_line(message)
    assert not any(c in xml for c in "\x1b\x07\x00")
    assert "\\u00" not in json_line  # no escaped control character either
    titles = [p.get("AlternativeUserID") for p in root.iter("ActiveParticipant")]
    assert "AETITLES=CT1 ]0;pwn" in titles, titles
    assert encoding.to_xml({"AuditMessage": {"EventIdentification": {
        "EventOutcomeDescription": "a\x1bb\ud800c"}}}).count("a b c") == 1


def test_a_senders_overlong_identifiers_are_cut_with_a_marker(validator: Any) -> None:
    """A 60,000-character Patient ID (or Study UID) went into the record whole: a sender could
    push its own records past syslog's datagram and receivers' message limits."""
    message = messages.instances_transferred(
        APP, calling_ae="MODALITY", called_ae="ROUTER", peer_address="192.0.2.10",
        study_uid="1." * 30_000, sop_classes={"9" * 70_000: 1}, outcome_ok=True,
        patient_id="P" * 60_000)
    assert_valid(validator, message)
    assert len(encoding.to_json_line(message)) < 3000
    objects = message["AuditMessage"]["ParticipantObjectIdentification"]
    patient = next(o for o in objects if o["ParticipantObjectTypeCode"] == "1")
    assert patient["ParticipantObjectID"] == "P" * 64 + "...(cut from 60000 characters)"
    assert objects[0]["ParticipantObjectID"].endswith("...(cut from 60000 characters)")
    uid = objects[0]["ParticipantObjectDescription"][0]["SOPClass"][0]["UID"]
    assert uid.startswith("9" * 64) and "cut" in uid
    short = messages.instances_transferred(
        APP, calling_ae="MODALITY", called_ae="ROUTER", peer_address="192.0.2.10",
        study_uid=STUDY, sop_classes={CT: 1}, outcome_ok=True, patient_id="P" * 64)
    assert "cut" not in encoding.to_json_line(short)  # 64 characters (LO, UI) are kept
