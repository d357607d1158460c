"""The A-ASSOCIATE user information item (0x50) and its sub-items (PS3.7 Annex D,
PS3.8 Annex D): maximum length (0x51), implementation class UID (0x52) and version name
(0x55), asynchronous operations window (0x53), SCP/SCU role selection (0x54), SOP class
extended negotiation (0x56, passed through), user identity RQ/AC (0x58/0x59). Sub-items the
engine does not model (e.g. 0x57) are kept as (type, value) and sent back as they came."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

from router.dicom.engine.errors import DecodeError
from router.dicom.engine.items import (
    decode_text,
    decode_uid,
    encode_uid,
    item,
    iter_items,
    u16,
)

MAXIMUM_LENGTH = 0x51
IMPLEMENTATION_CLASS_UID = 0x52
ASYNC_OPERATIONS_WINDOW = 0x53
ROLE_SELECTION = 0x54
IMPLEMENTATION_VERSION_NAME = 0x55
EXTENDED_NEGOTIATION = 0x56
USER_IDENTITY_RQ = 0x58
USER_IDENTITY_AC = 0x59
MAX_REPEATED = 128  # role selection, extended negotiation, other sub-items: each


@dataclass(frozen=True, slots=True)
class RoleSelection:
    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class ExtendedNegotiation:
    sop_class_uid: str
    info: bytes  # service-class application information, passed through


@dataclass(frozen=True, slots=True)
class UserIdentityRQ:
    """Type: 1 username, 2 username and passcode, 3 Kerberos, 4 SAML, 5 JWT."""

    identity_type: int
    positive_response_requested: bool
    primary: bytes
    secondary: bytes = b""


@dataclass(frozen=True, slots=True)
class UserInformation:
    """max_length 0 means "no limit" (and is what an absent 0x51 item means)."""

    max_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str | None = None
    # (maximum invoked, maximum performed); None: absent, i.e. 1 outstanding operation.
    async_window: tuple[int, int] | None = None
    roles: tuple[RoleSelection, ...] = ()
    extended: tuple[ExtendedNegotiation, ...] = ()
    identity: UserIdentityRQ | None = None
    identity_response: bytes | None = None  # 0x59 server response (A-ASSOCIATE-AC)
    other: tuple[tuple[int, bytes], ...] = ()


def _uid_prefixed(uid: str) -> bytes:
    raw = encode_uid(uid)
    return struct.pack(">H", len(raw)) + raw


def _split_uid_prefixed(value: bytes) -> tuple[str, bytes]:
    if len(value) < 2:
        raise DecodeError("truncated UID length")
    n = u16(value[:2])
    if 2 + n > len(value):
        raise DecodeError("UID overruns its sub-item")
    return decode_uid(value[2 : 2 + n]), value[2 + n :]


def _identity_value(identity: UserIdentityRQ) -> bytes:
    return (
        struct.pack(">BBH", identity.identity_type, identity.positive_response_requested,
                    len(identity.primary))
        + identity.primary
        + struct.pack(">H", len(identity.secondary))
        + identity.secondary
    )


def encode_user_information(info: UserInformation) -> bytes:
    """The whole 0x50 item."""
    parts = [item(MAXIMUM_LENGTH, struct.pack(">I", info.max_length))]
    if info.implementation_class_uid:
        parts.append(item(IMPLEMENTATION_CLASS_UID, encode_uid(info.implementation_class_uid)))
    if info.async_window is not None:
        parts.append(item(ASYNC_OPERATIONS_WINDOW, struct.pack(">HH", *info.async_window)))
    for role in info.roles:
        value = _uid_prefixed(role.sop_class_uid) + bytes((role.scu_role, role.scp_role))
        parts.append(item(ROLE_SELECTION, value))
    if info.implementation_version_name is not None:
        name = info.implementation_version_name.encode("ascii", "replace")
        parts.append(item(IMPLEMENTATION_VERSION_NAME, name))
    for ext in info.extended:
        parts.append(item(EXTENDED_NEGOTIATION, _uid_prefixed(ext.sop_class_uid) + ext.info))
    parts += [item(kind, value) for kind, value in info.other]
    if info.identity is not None:
        parts.append(item(USER_IDENTITY_RQ, _identity_value(info.identity)))
    if info.identity_response is not None:
        response = info.identity_response
        parts.append(item(USER_IDENTITY_AC, struct.pack(">H", len(response)) + response))
    return item(0x50, b"".join(parts))


def _decode_identity(value: bytes) -> UserIdentityRQ:
    if len(value) < 4:
        raise DecodeError("truncated user identity")
    kind, wants_response, n = struct.unpack_from(">BBH", value)
    if 4 + n + 2 > len(value):
        raise DecodeError("user identity primary field overruns")
    primary = value[4 : 4 + n]
    m = u16(value[4 + n : 6 + n])
    if 6 + n + m != len(value):
        raise DecodeError("user identity secondary field length mismatch")
    return UserIdentityRQ(kind, bool(wants_response), bytes(primary), bytes(value[6 + n :]))


def _decode_identity_response(value: bytes) -> bytes:
    if len(value) < 2 or 2 + u16(value[:2]) != len(value):
        raise DecodeError("user identity response length mismatch")
    return bytes(value[2:])


def _decode_scalar(kind: int, value: bytes, info: UserInformation) -> UserInformation:
    """info with one more single-valued sub-item (unknown kinds are left to the caller)."""
    if kind == MAXIMUM_LENGTH:
        if len(value) != 4:
            raise DecodeError("maximum length sub-item is not 4 bytes")
        return replace(info, max_length=int.from_bytes(value, "big"))
    if kind == IMPLEMENTATION_CLASS_UID:
        return replace(info, implementation_class_uid=decode_uid(value))
    if kind == IMPLEMENTATION_VERSION_NAME:
        return replace(info, implementation_version_name=decode_text(value).rstrip(" \0"))
    if kind == ASYNC_OPERATIONS_WINDOW:
        if len(value) != 4:
            raise DecodeError("asynchronous operations window is not 4 bytes")
        invoked, performed = struct.unpack(">HH", value)
        return replace(info, async_window=(invoked, performed))
    if kind == USER_IDENTITY_RQ:
        return replace(info, identity=_decode_identity(value))
    return replace(info, identity_response=_decode_identity_response(value))


_SCALARS = frozenset({MAXIMUM_LENGTH, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME,
                      ASYNC_OPERATIONS_WINDOW, USER_IDENTITY_RQ, USER_IDENTITY_AC})


def decode_user_information(data: bytes) -> UserInformation:
    """The value of a 0x50 item. Repeated sub-items are collected in lists of at most
    MAX_REPEATED each: one per SOP class is what PS3.7 Annex D defines, and a request
    proposes 128 SOP classes at most."""
    info = UserInformation()
    roles: list[RoleSelection] = []
    extended: list[ExtendedNegotiation] = []
    other: list[tuple[int, bytes]] = []
    for kind, value in iter_items(data):
        if kind in _SCALARS:
            info = _decode_scalar(kind, value, info)
        elif kind == ROLE_SELECTION:
            uid, rest = _split_uid_prefixed(value)
            if len(rest) != 2:
                raise DecodeError("role selection needs 2 role bytes")
            _room(roles, "role selection")
            roles.append(RoleSelection(uid, bool(rest[0]), bool(rest[1])))
        elif kind == EXTENDED_NEGOTIATION:
            uid, rest = _split_uid_prefixed(value)
            _room(extended, "extended negotiation")
            extended.append(ExtendedNegotiation(uid, bytes(rest)))
        else:
            _room(other, f"0x{kind:02X}")
            other.append((kind, bytes(value)))
    return replace(info, roles=tuple(roles), extended=tuple(extended), other=tuple(other))


def _room(items: list[Any], what: str) -> None:
    if len(items) == MAX_REPEATED:
        raise DecodeError(f"user information holds more than {MAX_REPEATED} {what} items")
