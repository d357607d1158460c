"""UID validation: a UID names files on disk, so a hostile one must never escape a folder."""

from __future__ import annotations

import re

from router.core.errors import InvalidUID

# PS3.5 9.1: components of digits separated by '.', no leading zeros, at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def require_uid(value: object, name: str) -> str:
    """Return `value` if it is a well-formed UID, else raise InvalidUID naming the attribute.

    The message describes the value without quoting it: it is logged, and a hostile UID
    could carry newlines or control bytes (UIDs are never logged anyway).
    """
    if not is_valid_uid(value):
        raise InvalidUID(f"{name} ({describe(value)}) is not a valid DICOM UID")
    return str(value)


def uid_for_log(value: object) -> str:
    """A UID as a log line may show it: the value if well-formed, else a description."""
    return str(value) if is_valid_uid(value) else f"a malformed UID ({describe(value)})"


def describe(value: object) -> str:
    """What is wrong with a malformed UID, without quoting it."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}, not text"
    if len(value) > 64:
        return f"{len(value)} characters, more than 64"
    if set(value) - set("0123456789."):
        return f"{len(value)} characters, not only digits and dots"
    return f"{len(value)} characters, empty or misplaced components"
