"""PDU framing and the small PDUs (PS3.8 9.3): header type (1), reserved (1), length
(4, big-endian); A-RELEASE-RQ/RP, A-ABORT; P-DATA-TF encoding (PDV items: length (4),
presentation context ID (1), message control header (1: bit 0 command, bit 1 last)).

`encode_pdu` turns any PDU value into bytes; `decode_pdu` a (type, body) into a value
(P-DATA-TF bodies are streamed by framing.py, never decoded whole here)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from router.dicom.engine.associate import (
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    decode_associate_ac,
    decode_associate_rj,
    decode_associate_rq,
    encode_associate_ac,
    encode_associate_rj,
    encode_associate_rq,
)
from router.dicom.engine.errors import AbortReason, DecodeError

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

PDU_HEADER = struct.Struct(">BxI")
PDV_HEADER = struct.Struct(">IBB")  # item length, context ID, message control header
PDU_AND_PDV_HEADER = struct.Struct(">BxIIBB")
MCH_COMMAND = 0x01
MCH_LAST = 0x02


@dataclass(frozen=True, slots=True)
class ReleaseRQ:
    pass


@dataclass(frozen=True, slots=True)
class ReleaseRP:
    pass


@dataclass(frozen=True, slots=True)
class Abort:
    """source: 0 service-user, 2 service-provider; reason meaningful for source 2."""

    source: int = 0
    reason: int = 0


Pdu = AssociateRQ | AssociateAC | AssociateRJ | ReleaseRQ | ReleaseRP | Abort


def frame(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def encode_pdu(pdu: Pdu) -> bytes:
    """The whole PDU, header included. Raises LocalProtocolError on unencodable values."""
    if isinstance(pdu, AssociateRQ):
        return frame(A_ASSOCIATE_RQ, encode_associate_rq(pdu))
    if isinstance(pdu, AssociateAC):
        return frame(A_ASSOCIATE_AC, encode_associate_ac(pdu))
    if isinstance(pdu, AssociateRJ):
        return frame(A_ASSOCIATE_RJ, encode_associate_rj(pdu))
    if isinstance(pdu, ReleaseRQ):
        return frame(A_RELEASE_RQ, bytes(4))
    if isinstance(pdu, ReleaseRP):
        return frame(A_RELEASE_RP, bytes(4))
    return frame(A_ABORT, bytes((0, 0, pdu.source, pdu.reason)))


def _four(body: bytes, name: str) -> bytes:
    if len(body) != 4:
        raise DecodeError(f"{name} body is not 4 bytes")
    return body


def decode_pdu(pdu_type: int, body: bytes) -> Pdu:
    """The value of a complete non-P-DATA PDU body; unknown type -> DecodeError with
    reason "unrecognized PDU" (PS3.8 Table 9-26)."""
    if pdu_type == A_ASSOCIATE_RQ:
        return decode_associate_rq(body)
    if pdu_type == A_ASSOCIATE_AC:
        return decode_associate_ac(body)
    if pdu_type == A_ASSOCIATE_RJ:
        return decode_associate_rj(body)
    if pdu_type == A_RELEASE_RQ:
        _four(body, "A-RELEASE-RQ")
        return ReleaseRQ()
    if pdu_type == A_RELEASE_RP:
        _four(body, "A-RELEASE-RP")
        return ReleaseRP()
    if pdu_type == A_ABORT:
        raw = _four(body, "A-ABORT")
        return Abort(raw[2], raw[3])
    raise DecodeError(f"unrecognized PDU type 0x{pdu_type:02X}", AbortReason.UNRECOGNIZED_PDU)


def encode_pdata(context_id: int, data: bytes | memoryview, control: int, max_pdu: int) -> bytes:
    """P-DATA-TF PDUs carrying data as one message fragment sequence: one PDV per PDU, each
    PDU's variable field at most max_pdu bytes; the last PDV gets `control | MCH_LAST` when
    control has MCH_LAST set, the others `control & ~MCH_LAST`."""
    room = max_pdu - PDV_HEADER.size
    if room < 1:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    view = memoryview(data)
    total = len(view)
    middle = control & ~MCH_LAST
    parts: list[bytes | memoryview] = []
    pos = 0
    while True:
        n = min(room, total - pos)
        end = pos + n
        mch = control if end == total else middle
        parts.append(PDU_AND_PDV_HEADER.pack(P_DATA_TF, n + 6, n + 2, context_id, mch))
        parts.append(view[pos:end])
        pos = end
        if pos >= total:
            return b"".join(parts)
