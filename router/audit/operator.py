"""Audit messages for what operators do through the API or the console (PS3.15 A.5.3.11).

An action on a destination or on dead letters changes how the running router behaves: it
is recorded as a Security Alert of type Software Configuration, with the operator as the
requesting participant (who, from where), the action and its result as the description
(what), and the event time (when). A refused action (wrong token, unknown destination) is
recorded with outcome 4.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from router.audit.codes import (
    SECURITY_ALERT,
    SECURITY_CONFIGURATION,
    SOFTWARE_CONFIGURATION,
    USE_OF_RESTRICTED_FUNCTION,
)
from router.audit.messages import (  # the audit room's own builders
    AuditMessage,
    LocalApplication,
    _address_type,
    _event,
    _local,
    _message,
    _os_user,
    _text,
    _token,
)
from router.audit.trail import AuditTrail
from router.core.audit_config import AuditConfig

# Config keys that decide who may connect or operate the router, or what is audited: a
# reload changing one is a Security Configuration change, any other a Software one.
SECURITY_KEYS = (
    "listen.allowed_calling_ae", "listen.allowed_called_ae", "listen.allowed_sources",
    "listen.require_calling_ae", "listen.require_called_ae", "listen.tls", "listen.users",
    "listen.require_user_identity", "api", "console", "metrics", "audit",
)


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


def config_change(app: LocalApplication, changed: Sequence[str]) -> AuditMessage:
    """A.5.3.11: a reloaded config was applied. Names the changed keys, never their values
    (they may hold secrets or addresses)."""
    security = any(k == p or k.startswith(p + ".") for k in changed for p in SECURITY_KEYS)
    kind = SECURITY_CONFIGURATION if security else SOFTWARE_CONFIGURATION
    event = _event(SECURITY_ALERT, "E", "0", [kind],
                   f"config reloaded; changed keys: {', '.join(changed)}")
    return _message(event, [_local(app, requestor=True, role=None)], app)


def record_config_change(trail: AuditTrail | None, changed: Sequence[str]) -> None:
    if trail is not None and trail.config.enabled:
        trail.record(config_change(trail.app, changed))


def record_cli_action(config: AuditConfig, router_ae: str, *, action: str, detail: str,
                      ok: bool) -> None:
    """An operator's command line action on the spool: recorded like the API's, by
    `cli:<OS user>` from this host, in the trail the router writes (whole-line appends)."""
    if not config.enabled:
        return
    trail = AuditTrail(config, router_ae)
    try:
        record_action(trail, user=f"cli:{_os_user() or os.getuid()}",
                      address=socket.gethostname(), action=action, detail=detail, ok=ok)
    finally:
        trail.close()
