"""The DICOM audit trail: PS3.15 A.5 audit messages as JSON lines, optionally to syslog.

Messages use the element and attribute names of the DICOM Audit Message schema (A.5.1, from
RFC 3881); router/audit/schemas/audit-message.schema.json describes the JSON form and
docs/audit.md which router event becomes which message.

The trail is the one place that may hold identifiers of studies (and a Patient ID where the
standard's message asks for it). Nothing here writes them to the ordinary log: warnings name
the audit file, the syslog server and the error, never a message's content.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import ipaddress
import json
import logging
import os
import socket
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from router.audit.syslog_sender import OnceWarner, SyslogSender, format_rfc5424
from router.core.audit_config import AuditConfig

log = logging.getLogger(__name__)

AuditMessage = dict[str, Any]
Outcome = Literal["0", "4", "8", "12"]  # success, minor, serious, major failure
SecurityAlertKind = Literal[
    "bad_certificate", "denied_ae", "association_rejected",
    "restricted_function", "security_configuration", "software_configuration",
]
MAX_TEXT = 1024  # free text (reasons, alert descriptions) is cut here


# ---------------------------------------------------------------- configuration


# ---------------------------------------------------------------- codes


class Code(NamedTuple):
    """A coded value (csd-code, codeSystemName, originalText)."""

    code: str
    system: str
    meaning: str

    def json(self) -> dict[str, str]:
        return {"csd-code": self.code, "codeSystemName": self.system, "originalText": self.meaning}


# Event IDs (DCID 400) and event type codes (DCID 401, 403) of PS3.16.
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
SECURITY_CONFIGURATION = Code("110129", "DCM", "Security Configuration")
SOFTWARE_CONFIGURATION = Code("110131", "DCM", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
# Active participant roles (DCID 402).
ROLE_APPLICATION = Code("110150", "DCM", "Application")
ROLE_APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
ROLE_DESTINATION = Code("110152", "DCM", "Destination Role ID")
ROLE_SOURCE = Code("110153", "DCM", "Source Role ID")
# Participant object ID types.
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
NODE_ID = Code("110182", "DCM", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")

ALERT_TYPES: dict[str, Code] = {
    "bad_certificate": NODE_AUTHENTICATION,
    "denied_ae": NODE_AUTHENTICATION,
    "association_rejected": NODE_AUTHENTICATION,
    "restricted_function": USE_OF_RESTRICTED_FUNCTION,
    "security_configuration": SECURITY_CONFIGURATION,
    "software_configuration": SOFTWARE_CONFIGURATION,
}
AUDIT_SOURCE_APPLICATION_SERVER = "4"  # A.5.1.2.1: application server process


# ---------------------------------------------------------------- message builders


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
    """xsd:token: whitespace collapsed to single spaces, none at either end."""
    return " ".join(str(value).split())


def _text(value: object) -> str:
    """Free text without control characters (they are not allowed in XML), cut to MAX_TEXT."""
    cleaned = "".join(c if c.isprintable() else " " for c in str(value))
    return cleaned[:MAX_TEXT]


def _ae_titles(*titles: str | None) -> str:
    """A.5.2.2: AlternativeUserID of a DICOM application."""
    unique = dict.fromkeys(_token(t) for t in titles if t and t.strip())
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
    tls_subject: str | None = None,
    outcome: Outcome = "0",
    description: str | None = None,
) -> AuditMessage:
    """A.5.3.12 User Authentication, Login: an association was accepted (outcome 0), or
    turned away for a reason that is not about who the peer is (outcome 4: retry later)."""
    event = _event(USER_AUTHENTICATION, "E", outcome, [LOGIN], description)
    participants = [
        _peer(calling_ae, peer_address, requestor=True, user_name=tls_subject),
        _local(app, requestor=False, role=None, called_ae=called_ae),
    ]
    return _message(event, participants, app)


def security_alert(
    app: LocalApplication,
    *,
    alert_type: Code,
    detail: str,
    peer_address: str | None,
    calling_ae: str | None = None,
    outcome: Outcome = "4",
) -> AuditMessage:
    """A.5.3.11 Security Alert. Outcome 4: refused, i.e. mitigation worked (A.5.3.11)."""
    event = _event(SECURITY_ALERT, "E", outcome, [alert_type], detail)
    participants = [_local(app, requestor=False, role=None)]
    if calling_ae or peer_address:
        participants.append(_peer(calling_ae, peer_address, requestor=False))
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
    study = {
        "ParticipantObjectIDTypeCode": STUDY_INSTANCE_UID.json(),
        "ParticipantObjectDescription": [{
            "SOPClass": [
                {"UID": _token(uid), "NumberOfInstances": int(count)}
                for uid, count in sorted(sop_classes.items())
            ],
        }],
        "ParticipantObjectID": _token(study_uid) or "unknown",
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3",
    }
    objects = [study]
    if patient_id:  # A.5.3.7 asks for the patient; its name is optional and never recorded
        objects.append({
            "ParticipantObjectIDTypeCode": PATIENT_NUMBER.json(),
            "ParticipantObjectID": _token(patient_id),
            "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1",
        })
    return _message(event, participants, app, objects)


# ---------------------------------------------------------------- encodings

_TEXT_ELEMENTS = frozenset({
    "EventOutcomeDescription", "ParticipantObjectName", "ParticipantObjectQuery",
    "Encrypted", "Anonymized",
})


def _xml_value(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _xml_fill(element: ET.Element, content: Mapping[str, Any]) -> None:
    for name, value in content.items():
        if isinstance(value, list):
            for item in value:
                _xml_fill(ET.SubElement(element, name), item)
        elif isinstance(value, Mapping):
            _xml_fill(ET.SubElement(element, name), value)
        elif name in _TEXT_ELEMENTS:
            ET.SubElement(element, name).text = _xml_value(value)
        else:
            element.set(name, _xml_value(value))


def to_xml(message: AuditMessage) -> str:
    """The A.5.1 XML form (ASCII, non-ASCII as character references)."""
    root = ET.Element("AuditMessage")
    _xml_fill(root, message["AuditMessage"])
    data: bytes = ET.tostring(root, encoding="us-ascii", xml_declaration=False)
    return data.decode("ascii")


def to_json_line(message: AuditMessage) -> str:
    """One line of the JSON lines file (ASCII: no character can break the line or a parser)."""
    return json.dumps(message, ensure_ascii=True, separators=(",", ":"))


SYSLOG_SEVERITY: dict[str, int] = {"0": 5, "4": 4, "8": 3, "12": 2}  # notice .. critical
SYSLOG_MSGID = {"json": "DICOM+AUDIT+JSON", "xml": "IHE+RFC-3881"}


# ---------------------------------------------------------------- the JSON lines file


class JsonLinesFile:
    """Appends whole lines with one write each (O_APPEND), reopening after log rotation."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self._fd: int | None = None
        self._lock = threading.Lock()

    def append(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        with self._lock:
            fd = self._current_fd()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)

    def _current_fd(self) -> int:
        if self._fd is not None:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except OSError:
                same = False  # moved away or deleted: start a new file
            if same:
                return self._fd
            self._close_fd()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)
        return self._fd

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._close_fd()


# ---------------------------------------------------------------- the trail


class AuditTrail:
    """Records audit events. Thread-safe; no method raises or waits on the network.

    A failing disk or syslog server is reported once in the ordinary log (without message
    content) and the router goes on.
    """

    def __init__(self, config: AuditConfig, router_ae: str) -> None:
        self.config = config
        self.app = LocalApplication(
            ae_title=router_ae,
            source_id=config.source_id or router_ae,
            site_id=config.enterprise_site_id,
        )
        self._warn = OnceWarner(log)
        self._closed = False
        self._file: JsonLinesFile | None = None
        self._syslog: SyslogSender | None = None
        if not config.enabled:
            return
        self._file = JsonLinesFile(config.path, fsync=config.fsync)
        if config.syslog is not None:
            try:
                self._syslog = SyslogSender(config.syslog)
            except Exception as exc:  # e.g. no thread can be started
                self._warn.warn("syslog", "audit syslog disabled: %s", exc)

    @property
    def enabled(self) -> bool:
        return self.config.enabled and not self._closed

    @property
    def syslog_dropped(self) -> int:
        """Messages that never reached the syslog server (all are in the JSON lines file)."""
        return 0 if self._syslog is None else self._syslog.dropped

    def application_started(self) -> None:
        self._emit(lambda: application_activity(self.app, started=True))

    def application_stopped(self) -> None:
        self._emit(lambda: application_activity(self.app, started=False))

    def association_accepted(
        self, calling_ae: str, called_ae: str, peer_address: str, tls_subject: str | None = None
    ) -> None:
        self._emit(lambda: user_authentication(
            self.app, calling_ae=calling_ae, called_ae=called_ae,
            peer_address=peer_address, tls_subject=tls_subject))

    def association_rejected(
        self,
        calling_ae: str,
        called_ae: str,
        peer_address: str,
        reason: str,
        *,
        security: bool = True,
    ) -> None:
        """A rejected association: a Security Alert (Node Authentication) by default.

        security=False for rejections that are not about who the peer is (temporary
        congestion, association limit): those become a failed Login (outcome 4) instead.
        """
        detail = f"association rejected: {reason} (calling AE {calling_ae!r}, " \
                 f"called AE {called_ae!r})"
        if not security:
            self._emit(lambda: user_authentication(
                self.app, calling_ae=calling_ae, called_ae=called_ae,
                peer_address=peer_address, outcome="4", description=detail))
            return
        self._emit(lambda: security_alert(
            self.app, alert_type=ALERT_TYPES["association_rejected"], detail=detail,
            peer_address=peer_address, calling_ae=calling_ae))

    def instances_transferred(
        self,
        calling_ae: str,
        called_ae: str,
        peer_address: str,
        study_uid: str,
        sop_classes: Mapping[str, int],
        outcome_ok: bool,
        *,
        patient_id: str | None = None,
        description: str | None = None,
    ) -> None:
        counts = dict(sop_classes)  # the caller may reuse its mapping
        self._emit(lambda: instances_transferred(
            self.app, calling_ae=calling_ae, called_ae=called_ae, peer_address=peer_address,
            study_uid=study_uid, sop_classes=counts, outcome_ok=outcome_ok,
            patient_id=patient_id, description=description))

    def security_alert(
        self,
        kind: SecurityAlertKind,
        detail: str,
        peer_address: str | None,
        calling_ae: str | None = None,
    ) -> None:
        # An unknown kind is still recorded: losing a security alert is worse than a vague one.
        alert_type = ALERT_TYPES.get(str(kind), NODE_AUTHENTICATION)
        self._emit(lambda: security_alert(
            self.app, alert_type=alert_type, detail=f"{kind}: {detail}",
            peer_address=peer_address, calling_ae=calling_ae))

    def record(self, message: AuditMessage) -> None:
        """Write one built message to the file and queue it for syslog."""
        if not self.enabled:
            return
        if self._file is not None:
            try:
                self._file.append(to_json_line(message))
            except (OSError, ValueError) as exc:
                self._warn.warn("file", "cannot append to the audit trail %s (%s); audit "
                                "messages are being lost", self.config.path, exc)
            else:
                self._warn.recovered("file", "audit trail %s is written again", self.config.path)
        if self._syslog is not None:
            try:
                self._syslog.submit(self._syslog_message(message))
            except Exception as exc:
                self._warn.warn("syslog-format", "cannot format an audit syslog message (%s)",
                                type(exc).__name__)

    def _syslog_message(self, message: AuditMessage) -> bytes:
        assert self.config.syslog is not None
        fmt = self.config.syslog_format
        outcome = str(message["AuditMessage"]["EventIdentification"]["EventOutcomeIndicator"])
        return format_rfc5424(
            to_xml(message) if fmt == "xml" else to_json_line(message),
            facility=self.config.syslog.facility,
            severity=SYSLOG_SEVERITY.get(outcome, 5),
            app_name=self.config.syslog.app_name,
            msgid=SYSLOG_MSGID[fmt],
            hostname=self.app.hostname,
            procid=self.app.process_id,
        )

    def _emit(self, build: Callable[[], AuditMessage]) -> None:
        if not self.enabled:
            return
        try:
            message = build()
        except Exception as exc:  # a bug here must never cost the caller its association
            self._warn.warn("build", "cannot build an audit message (%s)", type(exc).__name__)
            return
        self.record(message)

    def close(self, timeout: float = 2.0) -> None:
        """Stop: send what syslog has queued for up to `timeout` seconds, close the file."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._syslog is not None:
                self._syslog.close(timeout)
            if self._file is not None:
                self._file.close()
        except Exception as exc:
            self._warn.warn("close", "closing the audit trail failed (%s)", exc)

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- per-study tally


class TransferTally:
    """One association's C-STOREs counted per study, outcome and SOP class.

    A.5.3.7 reports transfers per study, and a study with refusals gets one message for what
    succeeded and one for what failed (A.5.2, EventOutcomeIndicator). Call `add` per C-STORE
    and `flush` when the association ends.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, bool], Counter[str]] = {}
        self._patients: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(
        self, study_uid: str, sop_class_uid: str, ok: bool, patient_id: str | None = None
    ) -> None:
        with self._lock:
            self._counts.setdefault((study_uid, ok), Counter())[sop_class_uid] += 1
            if patient_id:
                self._patients.setdefault(study_uid, patient_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)

    def flush(self, trail: AuditTrail, calling_ae: str, called_ae: str, peer_address: str) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            patients, self._patients = self._patients, {}
        for (study_uid, ok), by_class in counts.items():
            trail.instances_transferred(
                calling_ae, called_ae, peer_address, study_uid, dict(by_class), ok,
                patient_id=patients.get(study_uid))
