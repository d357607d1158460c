"""Audit messages for what operators do through the API or the console (PS3.15 A.5.3.11).

An action on a destination or on dead letters changes how the running router behaves: it
is recorded as a Security Alert of type Software Configuration, with the operator as the
requesting participant (who, from where), the action and its result as the description
(what), and the event time (when). A refused action (wrong token, unknown destination) is
recorded with outcome 4.
"""

from __future__ import annotations

from router.audit.codes import SECURITY_ALERT, SOFTWARE_CONFIGURATION, USE_OF_RESTRICTED_FUNCTION
from router.audit.messages import (  # the audit room's own builders
    AuditMessage,
    LocalApplication,
    _address_type,
    _event,
    _local,
    _message,
    _text,
    _token,
)
from router.audit.trail import AuditTrail


def operator_action(app: LocalApplication, *, user: str, address: str, action: str,
                    detail: str, ok: bool, refused_access: bool = False) -> AuditMessage:
    """One operator action; `refused_access`: turned away for lack of rights (not a bad
    request), recorded as a Use of Restricted Function."""
    kind = USE_OF_RESTRICTED_FUNCTION if refused_access else SOFTWARE_CONFIGURATION
    event = _event(SECURITY_ALERT, "E", "0" if ok else "4", [kind],
                   f"{action}: {detail}")
    operator = {
        "UserID": _text(user or "unknown"),
        "UserIsRequestor": True,
        "NetworkAccessPointID": _token(address or "unknown"),
        "NetworkAccessPointTypeCode": _address_type(address),
    }
    return _message(event, [operator, _local(app, requestor=False, role=None)], app)


def record_action(trail: AuditTrail | None, *, user: str, address: str, action: str,
                  detail: str, ok: bool, refused_access: bool = False) -> None:
    if trail is None or not trail.config.enabled:
        return
    message = operator_action(trail.app, user=user, address=address, action=action,
                              detail=detail, ok=ok, refused_access=refused_access)
    trail.record(message)
