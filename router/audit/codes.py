"""The coded values of the audit messages: event IDs and types, roles, object ID types."""

from __future__ import annotations

from typing import Literal, NamedTuple

SecurityAlertKind = Literal[
    "bad_certificate", "denied_ae", "association_rejected",
    "restricted_function", "security_configuration", "software_configuration",
]


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
PROCEDURE_RECORD = Code("110111", "DCM", "Procedure Record")
QUERY = Code("110112", "DCM", "Query")
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
SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
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
