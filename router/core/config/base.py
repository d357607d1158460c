"""What every part of the config shares: the strict base model (unknown keys rejected) and
the validators of AE titles, networks and UIDs."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from router.core.patterns import compile_pattern

DEFAULT_MAX_PDU = 262_144  # 16 KB (pynetdicom's default) halves throughput; 0 would buffer all

# How much of a bad value an error message repeats: a 100,000-character AE title made a
# 100 KB error line.
SHOWN_CHARS = 100


def shown(value: object) -> str:
    """repr(value) for an error message, its text cut to SHOWN_CHARS."""
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return f"{value[:SHOWN_CHARS]!r}..."
    return repr(value)


def _check_ae_title(value: str) -> str:
    # PS3.5: AE is at most 16 characters, no backslash or control characters, not all spaces.
    # The acceptor refuses the same titles from a peer (router/acceptor/access.py).
    if not value.strip() or len(value) > 16 or "\\" in value \
            or any(ord(c) < 0x20 or ord(c) >= 0x7F for c in value):
        raise ValueError(f"{shown(value)} is not a valid AE title (1-16 characters, no "
                         "backslash, control or non-ASCII characters)")
    return value.strip()


AETitle = Annotated[str, Field(min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_networks(value: Any) -> Any:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    for item in items:
        try:
            ipaddress.ip_network(str(item), strict=True)
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a CIDR network ({exc})") from None
    return [str(item) for item in items]


StrOrList = str | list[str]


def _check_patterns(value: StrOrList | None) -> StrOrList | None:
    """Every "re:<regex>" compiles: a bad one would otherwise crash the acceptor at start
    (and on reload) instead of failing `check-config`."""
    for item in [value] if isinstance(value, str) else value or []:
        if isinstance(item, str) and item.startswith("re:"):
            try:
                compile_pattern(item[3:])
            except ValueError as exc:
                raise ValueError(f"bad regular expression {item!r}: {exc}") from None
    return value


def _transfer_syntax_uid(value: str) -> str:
    """A transfer syntax UID as is, or a keyword (ExplicitVRLittleEndian) to its UID."""
    from pydicom._uid_dict import UID_dictionary

    for uid, entry in UID_dictionary.items():
        if (uid == value or entry[4] == value) and entry[1] == "Transfer Syntax":
            return str(uid)
    raise ValueError(f"{value!r} is not a transfer syntax UID or keyword "
                     "(e.g. ExplicitVRLittleEndian, JPEG2000Lossless)")


def _sop_class_uid(value: str) -> str:
    """A UID as is; a keyword (StudyRootQueryRetrieveInformationModelFind) to its UID."""
    if re.fullmatch(r"[0-9]+(\.[0-9]+)+", value) or value.startswith("re:"):
        return value
    from pydicom._uid_dict import UID_dictionary  # lazily: see RuleMatch._known_keywords

    for uid, entry in UID_dictionary.items():
        if entry[4] == value:
            return str(uid)
    raise ValueError(f"{value!r} is neither a UID nor a SOP class keyword "
                     "(e.g. StudyRootQueryRetrieveInformationModelFind)")
