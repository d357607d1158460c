"""A-ASSOCIATE-RQ, -AC and -RJ PDUs (PS3.8 9.3.2-9.3.4): values and their codecs.

Bodies only: the 6-byte PDU header is framing's business (pdus.py). Presentation contexts
keep the order and IDs they were proposed with; an AC carries one result per context
(0 acceptance, 1 user rejection, 2 no reason, 3 abstract syntax not supported, 4 transfer
syntaxes not supported). Unknown top-level items are ignored, as PS3.8 9.3.1 asks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from router.dicom.engine.errors import DecodeError
from router.dicom.engine.items import (
    decode_ae,
    decode_uid,
    encode_ae,
    encode_uid,
    item,
    iter_items,
)
from router.dicom.engine.user_info import (
    UserInformation,
    decode_user_information,
    encode_user_information,
)

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT_ITEM = 0x10
CONTEXT_RQ_ITEM = 0x20
CONTEXT_AC_ITEM = 0x21
ABSTRACT_SYNTAX_ITEM = 0x30
TRANSFER_SYNTAX_ITEM = 0x40
USER_INFORMATION_ITEM = 0x50

# A request proposes each context under an odd ID from 1 to 255 (PS3.8 9.3.2.2), so 128 at
# most; a context lists each transfer syntax once, and there are fewer than 64 (PS3.5
# Annex A, retired ones included). Past these a request is not DICOM: refused before its
# items become objects that the association would hold for its life.
MAX_CONTEXTS = 128
MAX_TRANSFER_SYNTAXES = 64

# protocol version (2), reserved (2), called AE (16), calling AE (16), reserved (32)
_FIXED = struct.Struct(">H2x16s16s32x")

ACCEPTANCE = 0
USER_REJECTION = 1
NO_REASON = 2
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    context_id: int  # odd, 1-255
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    context_id: int
    result: int
    transfer_syntax: str = ""  # meaningful only when result is 0 (else decoded as "")


@dataclass(frozen=True, slots=True)
class AssociateRQ:
    called_ae: str
    calling_ae: str
    contexts: tuple[PresentationContextRQ, ...]
    user_info: UserInformation = field(default_factory=UserInformation)
    application_context: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AssociateAC:
    called_ae: str  # returned as the RQ had them (not tested by the receiver)
    calling_ae: str
    contexts: tuple[PresentationContextAC, ...]
    user_info: UserInformation = field(default_factory=UserInformation)
    application_context: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1

    def accepted(self) -> dict[int, str]:
        """Accepted context ID -> its transfer syntax."""
        return {c.context_id: c.transfer_syntax for c in self.contexts if c.result == 0}


@dataclass(frozen=True, slots=True)
class AssociateRJ:
    """result: 1 permanent, 2 transient; source: 1 service-user, 2 service-provider
    (ACSE), 3 service-provider (presentation); reason per source (PS3.8 Table 9-21)."""

    result: int
    source: int
    reason: int

    def describe(self) -> str:
        """In words and codes, for a log an operator reads: `rejected transient, by
        service provider (presentation): local limit exceeded (result 2, source 3,
        reason 2)`."""
        codes = f"(result {self.result}, source {self.source}, reason {self.reason})"
        result = _RJ_RESULTS.get(self.result)
        source = _RJ_SOURCES.get(self.source)
        reason = _RJ_REASONS.get((self.source, self.reason))
        if result is None or source is None or reason is None:
            return codes  # codes PS3.8 does not define: the peer's own
        return f"{result}, by {source}: {reason} {codes}"


_RJ_RESULTS = {1: "rejected permanent", 2: "rejected transient"}
_RJ_SOURCES = {1: "service user", 2: "service provider (ACSE)",
               3: "service provider (presentation)"}
_RJ_REASONS = {  # PS3.8 Table 9-21 (the others are reserved)
    (1, 1): "no reason given", (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised", (1, 7): "called AE title not recognised",
    (2, 1): "no reason given", (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion", (3, 2): "local limit exceeded",
}


def _fixed(version: int, called: str, calling: str) -> bytes:
    return _FIXED.pack(version, encode_ae(called), encode_ae(calling))


def _context_rq(ctx: PresentationContextRQ) -> bytes:
    subs = [item(ABSTRACT_SYNTAX_ITEM, encode_uid(ctx.abstract_syntax))]
    subs += [item(TRANSFER_SYNTAX_ITEM, encode_uid(ts)) for ts in ctx.transfer_syntaxes]
    return item(CONTEXT_RQ_ITEM, bytes((ctx.context_id, 0, 0, 0)) + b"".join(subs))


def _context_ac(ctx: PresentationContextAC) -> bytes:
    # The transfer syntax sub-item is always present; when the context is not accepted its
    # value "shall not be tested" (PS3.8 Table 9-18), and Implicit VR LE is as good as any.
    ts = item(TRANSFER_SYNTAX_ITEM, encode_uid(ctx.transfer_syntax or IMPLICIT_VR_LE))
    return item(CONTEXT_AC_ITEM, bytes((ctx.context_id, 0, ctx.result, 0)) + ts)


def encode_associate_rq(rq: AssociateRQ) -> bytes:
    return b"".join([
        _fixed(rq.protocol_version, rq.called_ae, rq.calling_ae),
        item(APPLICATION_CONTEXT_ITEM, encode_uid(rq.application_context)),
        *(_context_rq(ctx) for ctx in rq.contexts),
        encode_user_information(rq.user_info),
    ])


def encode_associate_ac(ac: AssociateAC) -> bytes:
    return b"".join([
        _fixed(ac.protocol_version, ac.called_ae, ac.calling_ae),
        item(APPLICATION_CONTEXT_ITEM, encode_uid(ac.application_context)),
        *(_context_ac(ctx) for ctx in ac.contexts),
        encode_user_information(ac.user_info),
    ])


def encode_associate_rj(rj: AssociateRJ) -> bytes:
    return bytes((0, rj.result, rj.source, rj.reason))


def _decode_context_rq(value: bytes) -> PresentationContextRQ:
    if len(value) < 4:
        raise DecodeError("truncated presentation context")
    abstract = ""
    syntaxes: list[str] = []
    for kind, sub in iter_items(value[4:]):
        if kind == ABSTRACT_SYNTAX_ITEM:
            abstract = decode_uid(sub)
        elif kind == TRANSFER_SYNTAX_ITEM:
            if len(syntaxes) == MAX_TRANSFER_SYNTAXES:
                raise DecodeError(f"a presentation context proposes more than "
                                  f"{MAX_TRANSFER_SYNTAXES} transfer syntaxes")
            syntaxes.append(decode_uid(sub))
    if not abstract or not syntaxes:
        raise DecodeError("presentation context without abstract or transfer syntax")
    return PresentationContextRQ(value[0], abstract, tuple(syntaxes))


def _decode_context_ac(value: bytes) -> PresentationContextAC:
    if len(value) < 4:
        raise DecodeError("truncated presentation context")
    syntax = ""
    for kind, sub in iter_items(value[4:]):
        if kind == TRANSFER_SYNTAX_ITEM:
            syntax = decode_uid(sub)
    result = value[2]
    return PresentationContextAC(value[0], result, syntax if result == ACCEPTANCE else "")


_Contexts = list[PresentationContextRQ | PresentationContextAC]


_Decoded = tuple[int, str, str, str, _Contexts, UserInformation]


def _decode(body: bytes, context_item: int) -> _Decoded:
    if len(body) < _FIXED.size:
        raise DecodeError("A-ASSOCIATE PDU shorter than its fixed fields")
    version, called, calling = _FIXED.unpack_from(body)
    app_context, user_info = "", None
    contexts: _Contexts = []
    for kind, value in iter_items(body[_FIXED.size :]):
        if kind == APPLICATION_CONTEXT_ITEM:
            app_context = decode_uid(value)
        elif kind == context_item:
            if len(contexts) == MAX_CONTEXTS:
                raise DecodeError(f"more than {MAX_CONTEXTS} presentation contexts")
            decode = _decode_context_rq if kind == CONTEXT_RQ_ITEM else _decode_context_ac
            contexts.append(decode(value))
        elif kind == USER_INFORMATION_ITEM:
            user_info = decode_user_information(value)
    if not app_context or user_info is None:
        raise DecodeError("A-ASSOCIATE PDU without application context or user information")
    return version, decode_ae(called), decode_ae(calling), app_context, contexts, user_info


def decode_associate_rq(body: bytes) -> AssociateRQ:
    version, called, calling, app, contexts, info = _decode(body, CONTEXT_RQ_ITEM)
    ctxs = tuple(c for c in contexts if isinstance(c, PresentationContextRQ))
    ids = [c.context_id for c in ctxs]
    if any(i % 2 == 0 for i in ids) or len(set(ids)) != len(ids):
        raise DecodeError("presentation context IDs must be odd and distinct")
    return AssociateRQ(called, calling, ctxs, info, app, version)


def decode_associate_ac(body: bytes) -> AssociateAC:
    version, called, calling, app, contexts, info = _decode(body, CONTEXT_AC_ITEM)
    ctxs = tuple(c for c in contexts if isinstance(c, PresentationContextAC))
    return AssociateAC(called, calling, ctxs, info, app, version)


def decode_associate_rj(body: bytes) -> AssociateRJ:
    if len(body) != 4:
        raise DecodeError("A-ASSOCIATE-RJ body is not 4 bytes")
    return AssociateRJ(body[1], body[2], body[3])
