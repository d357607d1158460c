"""A STOW-RS answer (PS3.18 10.5.3) read and judged: parse its JSON, and decide whether the
instance was stored, failed, or the service itself is unavailable. No I/O: the destination
(dicomweb.py) hands in the status, headers and body it read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.core.dimse_status import is_transient_failure
from router.core.errors import DeliveryError

_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
# The service (or the proxy before it) is down or throttles: nothing is wrong with the instance.
_UNAVAILABLE = {502: "bad gateway", 503: "service unavailable", 504: "gateway timeout",
                429: "too many requests"}
_MAX_RETRY_AFTER = 3600.0  # a Retry-After beyond an hour is a misconfigured server

@dataclass(frozen=True)
class StowAnswer:
    """What a STOW-RS response body says: SOP Instance UID -> FailureReason / WarningReason."""

    failed: dict[str, int | None]
    referenced: dict[str, int | None]
    message: str = ""  # a server's own error text (e.g. Orthanc's "Message")


def _values(item: Any, tag: str) -> list[Any]:
    element = item.get(tag) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def _references(body: dict[str, Any], sequence: str, reason: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for item in _values(body, sequence):
        uids, codes = _values(item, _REFERENCED_SOP_INSTANCE_UID), _values(item, reason)
        code = codes[0] if codes else None
        out[str(uids[0]) if uids else ""] = code if isinstance(code, int) else None
    return out


def parse_answer(content: bytes) -> StowAnswer:
    """Read an application/dicom+json STOW-RS response; an unreadable body says nothing."""
    try:
        body = json.loads(content) if content.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return StowAnswer({}, {})
    if isinstance(body, list) and body:  # the DICOM JSON model allows an array of one
        body = body[0]
    if not isinstance(body, dict):
        return StowAnswer({}, {})
    message = body.get("Message") or body.get("HttpError") or ""
    return StowAnswer(
        failed=_references(body, _FAILED_SOP_SEQUENCE, _FAILURE_REASON),
        referenced=_references(body, _REFERENCED_SOP_SEQUENCE, _WARNING_REASON),
        message=str(message)[:200],
    )


def classify(destination: str, status: int, answer: StowAnswer, sop_instance_uid: str,
             hint: str, headers: Mapping[str, str] | None = None) -> DeliveryError | None:
    """None when the instance was stored; else the DeliveryError that says why not."""
    said = f"{destination} answered HTTP {status}"
    service = _service_failure(said, status, hint, headers or {})
    if service is not None:
        return service
    if status == 408 or status >= 500:
        return DeliveryError("status", _detail(said, answer, sop_instance_uid), transient=True)
    if status in (404, 405):
        return DeliveryError("status", f"{said}: is url the DICOMweb service root (STOW-RS is "
                             "<url>/studies)?", transient=False)
    if not 200 <= status < 300:
        return DeliveryError("status", _detail(said, answer, sop_instance_uid), transient=False)
    return _classify_stored(said, answer, sop_instance_uid)


def _service_failure(said: str, status: int, hint: str,
                     headers: Mapping[str, str]) -> DeliveryError | None:
    """An answer about the service rather than the instance: the destination pauses, with
    what the operator has to fix."""
    if status in _UNAVAILABLE:
        return DeliveryError("unavailable", f"{said}: {_UNAVAILABLE[status]} (the service or "
                             "its proxy is down or throttles)", transient=True,
                             retry_after=retry_after(headers.get("Retry-After", "")))
    if status in (401, 403):
        return DeliveryError("auth", f"{said}: credentials refused ({hint})", transient=True)
    if 300 <= status < 400:
        location = headers.get("Location", "")
        to = f"{said} to {location}" if location else said
        return DeliveryError("redirect", f"{to}: the url redirects (set the final URL)",
                             transient=True)
    return None


def retry_after(value: str) -> float:
    """A Retry-After in seconds, capped; an HTTP date or anything else counts as none."""
    value = value.strip()
    return min(float(value), _MAX_RETRY_AFTER) if value.isdigit() else 0.0


def _classify_stored(said: str, answer: StowAnswer, uid: str) -> DeliveryError | None:
    if uid in answer.failed or (answer.failed and uid not in answer.referenced):
        code = _failure_code(answer, uid)
        return DeliveryError("status", _detail(said, answer, uid),
                             transient=code is not None and is_transient_failure(code))
    if answer.referenced and uid not in answer.referenced:
        return DeliveryError("status", f"{said} but does not list {uid} as stored",
                             transient=False)
    return None


def _failure_code(answer: StowAnswer, uid: str) -> int | None:
    """The instance's FailureReason; else the first listed (an unreadable part has no UID)."""
    if uid in answer.failed:
        return answer.failed[uid]
    return next(iter(answer.failed.values()), None)


def _detail(said: str, answer: StowAnswer, uid: str) -> str:
    code = _failure_code(answer, uid)
    text = said if code is None else f"{said} FailureReason 0x{code:04X}"
    return f"{text}: {answer.message}" if answer.message else text
