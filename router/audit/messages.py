"""Builders of the PS3.15 A.5 audit messages, as dicts in the JSON form: events, participants."""

from __future__ import annotations

import base64
import getpass
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from router.audit.codes import (
    APPLICATION_ACTIVITY,
    APPLICATION_START,
    APPLICATION_STOP,
    AUDIT_SOURCE_APPLICATION_SERVER,
    INSTANCES_TRANSFERRED,
    LOGIN,
    NODE_ID,
    PATIENT_NUMBER,
    ROLE_APPLICATION,
    ROLE_APPLICATION_LAUNCHER,
    ROLE_DESTINATION,
    ROLE_SOURCE,
    SECURITY_ALERT,
    STUDY_INSTANCE_UID,
    USER_AUTHENTICATION,
    Code,
)

AuditMessage = dict[str, Any]
Outcome = Literal["0", "4", "8", "12"]  # success, minor, serious, major failure
MAX_TEXT = 1024  # free text (reasons, alert descriptions) is cut here
# Identifiers a sender chose (UIDs, Patient ID, AE titles) are cut here: 64 is the longest
# UI or LO value, and a longer one must not carry a record past syslog's size limits.
MAX_IDENTIFIER = 64


@dataclass(frozen=True)
class LocalApplication:
    """This router process as an active participant and audit source."""

    ae_title: str
    source_id: str
    site_id: str | None = None
    name: str = "dicom-router"
    # A.5.2.1: a process is identified as in the system's own logs: by its process ID.
    process_id: str = field(default_factory=lambda: str(os.getpid()))
    hostname: str = field(default_factory=socket.gethostname)


def _token(value: object) -> str:
    """xsd:token: control characters and whitespace collapsed to single spaces, none at
    either end (a peer's AE title may hold any byte)."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(value)).split())


def _identifier(value: object) -> str:
    """A sender's identifier as a token, cut to MAX_IDENTIFIER with a marker saying so."""
    token = _token(value)
    if len(token) <= MAX_IDENTIFIER:
        return token
    return f"{token[:MAX_IDENTIFIER].rstrip()}...(cut from {len(token)} characters)"


def _text(value: object) -> str:
    """Free text without control characters (they are not allowed in XML), cut to MAX_TEXT."""
    cleaned = "".join(c if c.isprintable() else " " for c in str(value))
    return cleaned[:MAX_TEXT]


def _ae_titles(*titles: str | None) -> str:
    """A.5.2.2: AlternativeUserID of a DICOM application."""
    unique = dict.fromkeys(_identifier(t) for t in titles if t and t.strip())
    return "AETITLES=" + ";".join(unique)


def _address_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return "1"
    return "2"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _event(
    event_id: Code,
    action: str,
    outcome: Outcome,
    types: list[Code] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {"EventID": event_id.json()}
    if types:
        event["EventTypeCode"] = [t.json() for t in types]
    event["EventActionCode"] = action
    event["EventDateTime"] = _now()
    event["EventOutcomeIndicator"] = outcome
    if description:
        event["EventOutcomeDescription"] = _text(description)
    return event


def _local(
    app: LocalApplication, *, requestor: bool, role: Code | None, called_ae: str | None = None
) -> dict[str, Any]:
    participant: dict[str, Any] = {}
    if role is not None:
        participant["RoleIDCode"] = [role.json()]
    participant.update({
        "UserID": app.process_id,
        "AlternativeUserID": _ae_titles(app.ae_title, called_ae),
        "UserName": app.name,
        "UserIsRequestor": requestor,
        "NetworkAccessPointID": _token(app.hostname),
        "NetworkAccessPointTypeCode": "1",
    })
    return participant


def _peer(
    calling_ae: str | None,
    peer_address: str | None,
    *,
    requestor: bool,
    role: Code | None = None,
    user_name: str | None = None,
) -> dict[str, Any]:
    participant: dict[str, Any] = {}
    if role is not None:
        participant["RoleIDCode"] = [role.json()]
    # A.5.2.1: the identifier our logs use for the peer: its AE title, else its address.
    participant["UserID"] = _text(calling_ae or peer_address or "unknown")
    if calling_ae:
        participant["AlternativeUserID"] = _ae_titles(calling_ae)
    if user_name:
        participant["UserName"] = _text(user_name)
    participant["UserIsRequestor"] = requestor
    if peer_address:
        participant["NetworkAccessPointID"] = _token(peer_address)
        participant["NetworkAccessPointTypeCode"] = _address_type(peer_address)
    return participant


def _source(app: LocalApplication) -> dict[str, Any]:
    source: dict[str, Any] = {}
    if app.site_id:
        source["AuditEnterpriseSiteID"] = _token(app.site_id)
    source["AuditSourceID"] = _token(app.source_id)
    source["AuditSourceTypeCode"] = [{"csd-code": AUDIT_SOURCE_APPLICATION_SERVER}]
    return source


def _message(
    event: dict[str, Any],
    participants: list[dict[str, Any]],
    app: LocalApplication,
    objects: list[dict[str, Any]] | None = None,
) -> AuditMessage:
    body: dict[str, Any] = {
        "EventIdentification": event,
        "ActiveParticipant": participants,
        "AuditSourceIdentification": _source(app),
    }
    if objects:
        body["ParticipantObjectIdentification"] = objects
    return {"AuditMessage": body}


def application_activity(app: LocalApplication, *, started: bool) -> AuditMessage:
    """A.5.3.1 Application Activity: the router started or stopped."""
    event = _event(APPLICATION_ACTIVITY, "E", "0",
                   [APPLICATION_START if started else APPLICATION_STOP])
    participants = [_local(app, requestor=False, role=ROLE_APPLICATION)]
    launcher = _os_user() if started else None
    if launcher:
        participants.append({
            "RoleIDCode": [ROLE_APPLICATION_LAUNCHER.json()],
            "UserID": launcher,
            "UserIsRequestor": True,
        })
    return _message(event, participants, app)


def _os_user() -> str | None:
    try:
        return _text(getpass.getuser())
    except (OSError, KeyError):  # no user name for this uid (e.g. in a container)
        return None


def user_authentication(
    app: LocalApplication,
    *,
    calling_ae: str,
    called_ae: str,
    peer_address: str,
    tls_certificate: str | None = None,
    outcome: Outcome = "0",
    description: str | None = None,
    user: str | None = None,
) -> AuditMessage:
    """A.5.3.12 User Authentication, Login: an association was accepted (outcome 0), or
    turned away for a reason that is not about who the peer is (outcome 4: retry later),
    or for its user identity (outcome 4, `user`: the user name it gave, never a passcode)."""
    event = _event(USER_AUTHENTICATION, "E", outcome, [LOGIN], description)
    participants = [
        _peer(calling_ae, peer_address, requestor=user is None, user_name=tls_certificate),
        _local(app, requestor=False, role=None, called_ae=called_ae),
    ]
    if user is not None:  # A.5.3.12: the user who tried to log in is the requestor
        participants.insert(0, {"UserID": _identifier(user) or "unknown",
                                "UserIsRequestor": True})
    return _message(event, participants, app)


def security_alert(
    app: LocalApplication,
    *,
    alert_type: Code,
    detail: str,
    peer_address: str | None,
    calling_ae: str | None = None,
    outcome: Outcome = "4",
    tls_certificate: str | None = None,
) -> AuditMessage:
    """A.5.3.11 Security Alert. Outcome 4: refused, i.e. mitigation worked (A.5.3.11)."""
    event = _event(SECURITY_ALERT, "E", outcome, [alert_type], detail)
    participants = [_local(app, requestor=False, role=None)]
    if calling_ae or peer_address:
        participants.append(_peer(calling_ae, peer_address, requestor=False,
                                  user_name=tls_certificate))
    subject = _token(peer_address) if peer_address else _token(app.hostname)
    alert_object = {
        "ParticipantObjectIDTypeCode": NODE_ID.json(),
        "ParticipantObjectDetail": [{
            "type": "Alert Description",
            "value": base64.b64encode(_text(detail).encode("utf-8")).decode("ascii"),
        }],
        "ParticipantObjectID": subject,
        "ParticipantObjectTypeCode": "2",
    }
    return _message(event, participants, app, [alert_object])


@dataclass(frozen=True)
class RemoteNode:
    """A destination the router sends to: `user_id` its AE title (DICOM) or name, `address`
    its host (the URL's host for DICOMweb; None for a folder on the router's host)."""

    user_id: str
    ae_title: str | None = None
    address: str | None = None


def _destination(node: RemoteNode) -> dict[str, Any]:
    if node.ae_title:  # a DICOM peer: named as the acceptor names its senders
        return _peer(node.ae_title, node.address, requestor=False, role=ROLE_DESTINATION)
    participant: dict[str, Any] = {"RoleIDCode": [ROLE_DESTINATION.json()],
                                   "UserID": _text(node.user_id), "UserIsRequestor": False}
    if node.address:
        participant["NetworkAccessPointID"] = _token(node.address)
        participant["NetworkAccessPointTypeCode"] = _address_type(node.address)
    return participant


def _study_objects(study_uid: str, sop_classes: Mapping[str, int],
                   patient_id: str | None, anonymized: bool = False) -> list[dict[str, Any]]:
    """A.5.3.7's participant objects: the study with its instances per SOP class, and the
    patient (by Patient ID only: the name is optional there and never recorded).
    `anonymized`: what went out was de-identified; the objects still name the original study
    and patient, whose data it was (the schema's Anonymized says the copy carried neither)."""
    description: dict[str, Any] = {"SOPClass": [
        {"UID": _identifier(uid), "NumberOfInstances": int(count)}
        for uid, count in sorted(sop_classes.items())
    ]}
    if anonymized:
        description["Anonymized"] = True
    study = {
        "ParticipantObjectIDTypeCode": STUDY_INSTANCE_UID.json(),
        "ParticipantObjectDescription": [description],
        "ParticipantObjectID": _identifier(study_uid) or "unknown",
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3",
    }
    objects = [study]
    if patient_id:
        objects.append({
            "ParticipantObjectIDTypeCode": PATIENT_NUMBER.json(),
            "ParticipantObjectID": _identifier(patient_id),
            "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1",
        })
    return objects


def instances_forwarded(
    app: LocalApplication,
    *,
    destination: RemoteNode,
    study_uid: str,
    sop_classes: Mapping[str, int],
    outcome_ok: bool,
    patient_id: str | None = None,
    description: str | None = None,
    anonymized: bool = False,
) -> AuditMessage:
    """A.5.3.7 DICOM Instances Transferred, one study, as sent on to a destination
    (EventActionCode R: the router read them out of its spool and exported them). Outcome 4:
    they became dead letters. `anonymized`: the destination got them de-identified."""
    if description is None and not outcome_ok:
        description = "not delivered: dead letters"
    event = _event(INSTANCES_TRANSFERRED, "R", "0" if outcome_ok else "4", None, description)
    participants = [
        _local(app, requestor=True, role=ROLE_SOURCE),
        _destination(destination),
    ]
    return _message(event, participants, app,
                    _study_objects(study_uid, sop_classes, patient_id, anonymized))


def instances_transferred(
    app: LocalApplication,
    *,
    calling_ae: str,
    called_ae: str,
    peer_address: str,
    study_uid: str,
    sop_classes: Mapping[str, int],
    outcome_ok: bool,
    patient_id: str | None = None,
    description: str | None = None,
) -> AuditMessage:
    """A.5.3.7 DICOM Instances Transferred, one study, as received (EventActionCode C)."""
    if description is None and not outcome_ok:
        description = "some instances were refused"
    event = _event(INSTANCES_TRANSFERRED, "C", "0" if outcome_ok else "4", None, description)
    participants = [
        _peer(calling_ae, peer_address, requestor=True, role=ROLE_SOURCE),
        _local(app, requestor=False, role=ROLE_DESTINATION, called_ae=called_ae),
    ]
    # A.5.3.7 asks for the patient; its name is optional and never recorded
    return _message(event, participants, app,
                    _study_objects(study_uid, sop_classes, patient_id))
