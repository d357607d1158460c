"""UID validation: a UID names files on disk, so a hostile one must never escape a folder."""

from __future__ import annotations

import re

from router.core.errors import InvalidUID

# PS3.5 9.1: components of digits separated by '.', no leading zeros, at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def require_uid(value: object, name: str) -> str:
    """Return `value` if it is a well-formed UID, else raise InvalidUID naming the attribute."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUID(f"{name} {shown} is not a valid DICOM UID")
    return str(value)
