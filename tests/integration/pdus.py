"""Raw DICOM upper-layer PDUs as bytes (PS3.8 section 9.3), for fuzzing the acceptor.

Everything here is built by hand with `struct`, independent of pynetdicom, so a test can
put any value into any field: every builder that writes a length takes an optional
override (`length=`) that is written instead of the true one.

`RawAssociation` drives one association over a plain socket (associate, send PDUs,
read PDUs, release); `valid_echo_session()` does associate -> C-ECHO -> release and
returns the status the peer answered, which proves the builders produce valid PDUs.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# PDU types (PS3.8 9.3.1)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# Item types (PS3.8 9.3.2, 9.3.3, Annex D)
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ_ITEM = 0x20
PRESENTATION_CONTEXT_AC_ITEM = 0x21
ABSTRACT_SYNTAX_ITEM = 0x30
TRANSFER_SYNTAX_ITEM = 0x40
USER_INFORMATION_ITEM = 0x50
MAXIMUM_LENGTH_ITEM = 0x51
IMPLEMENTATION_CLASS_UID_ITEM = 0x52
IMPLEMENTATION_VERSION_NAME_ITEM = 0x55

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7156.1.1"  # any valid UID will do
IMPLEMENTATION_VERSION = "FUZZ_PDUS_1"

# DIMSE command fields (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0000

# Message control header bits (PS3.8 E.2)
MCH_COMMAND = 0x01
MCH_LAST = 0x02


def uid(value: str) -> bytes:
    """A UID value as the upper layer carries it: ASCII, no padding (PS3.8 9.3.2.2)."""
    return value.encode("ascii")


def ae_title(value: str) -> bytes:
    """An AE title field: 16 bytes, space padded."""
    return value.encode("ascii")[:16].ljust(16, b" ")


# --- items and sub-items: type, reserved, 2-byte length, value ----------------------------


def item(item_type: int, value: bytes, *, length: int | None = None) -> bytes:
    """One variable item: `length` (if given) is written instead of len(value)."""
    declared = len(value) if length is None else length
    return struct.pack(">BBH", item_type, 0, declared & 0xFFFF) + value


def application_context_item(name: str = APPLICATION_CONTEXT) -> bytes:
    return item(APPLICATION_CONTEXT_ITEM, uid(name))


def abstract_syntax_item(abstract_syntax: str) -> bytes:
    return item(ABSTRACT_SYNTAX_ITEM, uid(abstract_syntax))


def transfer_syntax_item(transfer_syntax: str) -> bytes:
    return item(TRANSFER_SYNTAX_ITEM, uid(transfer_syntax))


def presentation_context_rq_item(
    context_id: int, abstract_syntax: str, transfer_syntaxes: Sequence[str]
) -> bytes:
    """A presentation context item of an A-ASSOCIATE-RQ: ID, 3 reserved, sub-items."""
    value = struct.pack(">BBBB", context_id, 0, 0, 0) + abstract_syntax_item(abstract_syntax)
    value += b"".join(transfer_syntax_item(ts) for ts in transfer_syntaxes)
    return item(PRESENTATION_CONTEXT_RQ_ITEM, value)


def maximum_length_item(max_pdu: int) -> bytes:
    return item(MAXIMUM_LENGTH_ITEM, struct.pack(">I", max_pdu))


def user_information_item(
    max_pdu: int = 16384,
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
    implementation_version: str | None = IMPLEMENTATION_VERSION,
) -> bytes:
    value = maximum_length_item(max_pdu)
    value += item(IMPLEMENTATION_CLASS_UID_ITEM, uid(implementation_class_uid))
    if implementation_version:
        value += item(IMPLEMENTATION_VERSION_NAME_ITEM, implementation_version.encode("ascii"))
    return item(USER_INFORMATION_ITEM, value)


# --- PDUs: type, reserved, 4-byte length, value -------------------------------------------


def pdu(pdu_type: int, value: bytes, *, length: int | None = None) -> bytes:
    """One PDU: `length` (if given) is written instead of len(value)."""
    declared = len(value) if length is None else length
    return struct.pack(">BBI", pdu_type, 0, declared & 0xFFFFFFFF) + value


# (context ID, abstract syntax, transfer syntaxes)
Context = tuple[int, str, Sequence[str]]
DEFAULT_CONTEXTS: tuple[Context, ...] = (
    (1, VERIFICATION, (IMPLICIT_VR_LE,)),
    (3, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),
)


def associate_rq_items(
    contexts: Iterable[Context] = DEFAULT_CONTEXTS, max_pdu: int = 16384
) -> list[bytes]:
    """The variable items of an A-ASSOCIATE-RQ, in order, as separate byte strings."""
    return [
        application_context_item(),
        *(presentation_context_rq_item(cid, abstract, ts) for cid, abstract, ts in contexts),
        user_information_item(max_pdu),
    ]


def associate_rq_header(
    called_ae: str = "DICOM-ROUTER", calling_ae: str = "FUZZER", protocol_version: int = 1
) -> bytes:
    """The fixed part of an A-ASSOCIATE-RQ after the PDU header (68 bytes)."""
    return (
        struct.pack(">HH", protocol_version, 0)
        + ae_title(called_ae)
        + ae_title(calling_ae)
        + b"\x00" * 32
    )


def a_associate_rq(
    called_ae: str = "DICOM-ROUTER",
    calling_ae: str = "FUZZER",
    contexts: Iterable[Context] = DEFAULT_CONTEXTS,
    max_pdu: int = 16384,
    *,
    items: Sequence[bytes] | None = None,
    length: int | None = None,
) -> bytes:
    """A-ASSOCIATE-RQ; `items` (if given) replaces the generated variable items."""
    body = associate_rq_header(called_ae, calling_ae)
    body += b"".join(items if items is not None else associate_rq_items(contexts, max_pdu))
    return pdu(A_ASSOCIATE_RQ, body, length=length)


def pdv(
    context_id: int,
    data: bytes,
    *,
    command: bool,
    last: bool = True,
    length: int | None = None,
    control: int | None = None,
) -> bytes:
    """One presentation data value item: 4-byte length, context ID, control header, data.

    The item length counts the context ID and the control byte (PS3.8 9.3.5.1).
    """
    header = control if control is not None else (
        (MCH_COMMAND if command else 0) | (MCH_LAST if last else 0))
    declared = len(data) + 2 if length is None else length
    return struct.pack(">IBB", declared & 0xFFFFFFFF, context_id, header & 0xFF) + data


def p_data_tf(pdvs: Iterable[bytes], *, length: int | None = None) -> bytes:
    return pdu(P_DATA_TF, b"".join(pdvs), length=length)


def a_release_rq() -> bytes:
    return pdu(A_RELEASE_RQ, b"\x00" * 4)


def a_release_rp() -> bytes:
    return pdu(A_RELEASE_RP, b"\x00" * 4)


def a_abort(source: int = 0, reason: int = 0) -> bytes:
    return pdu(A_ABORT, struct.pack(">BBBB", 0, 0, source, reason))


# --- DIMSE command sets: implicit VR little endian (PS3.7 6.3.1) --------------------------


def element(tag: int, value: bytes, *, length: int | None = None) -> bytes:
    """One implicit VR LE element: group, element, 4-byte length, value."""
    declared = len(value) if length is None else length
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, declared & 0xFFFFFFFF) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def command_set(elements: dict[int, bytes]) -> bytes:
    """A command set with its (0000,0000) CommandGroupLength, elements in tag order."""
    body = b"".join(element(tag, elements[tag]) for tag in sorted(elements))
    return element(0x00000000, struct.pack("<I", len(body))) + body


def c_echo_rq(message_id: int = 1) -> bytes:
    return command_set({
        0x00000002: _ui(VERIFICATION),  # AffectedSOPClassUID
        0x00000100: _us(C_ECHO_RQ),  # CommandField
        0x00000110: _us(message_id),  # MessageID
        0x00000800: _us(NO_DATASET),  # CommandDataSetType
    })


def c_store_rq(
    sop_instance_uid: str, sop_class_uid: str = CT_IMAGE_STORAGE, message_id: int = 1
) -> bytes:
    return command_set({
        0x00000002: _ui(sop_class_uid),  # AffectedSOPClassUID
        0x00000100: _us(C_STORE_RQ),  # CommandField
        0x00000110: _us(message_id),  # MessageID
        0x00000700: _us(0),  # Priority: medium
        0x00000800: _us(DATASET_PRESENT),  # CommandDataSetType
        0x00001000: _ui(sop_instance_uid),  # AffectedSOPInstanceUID
    })


def decode_command(data: bytes) -> dict[int, bytes]:
    """Elements of an implicit VR LE command set, tag -> raw value."""
    elements: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, elem, size = struct.unpack_from("<HHI", data, offset)
        offset += 8
        elements[(group << 16) | elem] = data[offset:offset + size]
        offset += size
    return elements


def status_of(command: dict[int, bytes]) -> int:
    """(0000,0900) Status of a decoded response command set."""
    return int(struct.unpack("<H", command[0x00000900])[0])


# --- reading PDUs --------------------------------------------------------------------------


class PeerClosed(ConnectionError):
    """The peer closed the connection (possibly in the middle of a PDU)."""


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(65536, size - len(chunks)))
        if not chunk:
            raise PeerClosed(f"peer closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def read_pdu(sock: socket.socket, max_length: int = 1 << 24) -> tuple[int, bytes]:
    """(PDU type, value) of the next PDU the peer sends."""
    pdu_type, _, length = struct.unpack(">BBI", recv_exactly(sock, 6))
    if length > max_length:
        raise ValueError(f"peer declared a {length}-byte PDU")
    return pdu_type, recv_exactly(sock, length)


def parse_items(value: bytes) -> list[tuple[int, bytes]]:
    """(type, value) of consecutive variable items."""
    items: list[tuple[int, bytes]] = []
    offset = 0
    while offset + 4 <= len(value):
        item_type, _, size = struct.unpack_from(">BBH", value, offset)
        items.append((item_type, value[offset + 4:offset + 4 + size]))
        offset += 4 + size
    return items


@dataclass
class AssociateAC:
    contexts: dict[int, tuple[int, str]] = field(default_factory=dict)  # id -> (result, ts)
    max_pdu: int = 0


def parse_associate_ac(value: bytes) -> AssociateAC:
    """Presentation context results and the peer's maximum PDU length from an A-ASSOCIATE-AC."""
    ac = AssociateAC()
    for item_type, body in parse_items(value[68:]):
        if item_type == PRESENTATION_CONTEXT_AC_ITEM:
            context_id, _, result, _ = struct.unpack_from(">BBBB", body)
            syntaxes = [v for t, v in parse_items(body[4:]) if t == TRANSFER_SYNTAX_ITEM]
            ts = syntaxes[0].rstrip(b"\x00").decode("ascii") if syntaxes else ""
            ac.contexts[context_id] = (result, ts)
        elif item_type == USER_INFORMATION_ITEM:
            for sub_type, sub in parse_items(body):
                if sub_type == MAXIMUM_LENGTH_ITEM and len(sub) == 4:
                    ac.max_pdu = struct.unpack(">I", sub)[0]
    return ac


def parse_pdvs(value: bytes) -> list[tuple[int, int, bytes]]:
    """(context ID, control header, data) of each PDV in a P-DATA-TF value."""
    pdvs: list[tuple[int, int, bytes]] = []
    offset = 0
    while offset + 6 <= len(value):
        size, context_id, control = struct.unpack_from(">IBB", value, offset)
        pdvs.append((context_id, control, value[offset + 6:offset + 4 + size]))
        offset += 4 + size
    return pdvs


class AssociationRejected(ConnectionError):
    pass


class RawAssociation:
    """One association over a plain socket; every step is explicit and bounded by `timeout`."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ac: AssociateAC | None = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes]:
        return read_pdu(self.sock)

    def associate(
        self, called_ae: str = "DICOM-ROUTER", contexts: Iterable[Context] = DEFAULT_CONTEXTS,
        max_pdu: int = 16384, calling_ae: str = "FUZZER",
    ) -> AssociateAC:
        self.send(a_associate_rq(called_ae, calling_ae, contexts=contexts, max_pdu=max_pdu))
        pdu_type, value = self.read_pdu()
        if pdu_type != A_ASSOCIATE_AC:
            raise AssociationRejected(f"answered PDU type 0x{pdu_type:02X}: {value.hex()}")
        self.ac = parse_associate_ac(value)
        return self.ac

    def accepted_context(self, abstract_syntax_context_id: int) -> str:
        """The transfer syntax accepted for a context ID, or raise if it was not accepted."""
        assert self.ac is not None, "associate() first"
        result, ts = self.ac.contexts.get(abstract_syntax_context_id, (-1, ""))
        if result != 0:
            raise AssociationRejected(f"context {abstract_syntax_context_id} result {result}")
        return ts

    def read_command(self) -> dict[int, bytes]:
        """The next complete command set the peer sends (across PDVs and PDUs)."""
        data = bytearray()
        while True:
            pdu_type, value = self.read_pdu()
            if pdu_type != P_DATA_TF:
                raise ConnectionError(f"expected P-DATA-TF, got PDU type 0x{pdu_type:02X}")
            for _, control, fragment in parse_pdvs(value):
                if control & MCH_COMMAND:
                    data += fragment
                    if control & MCH_LAST:
                        return decode_command(bytes(data))

    def echo(self, context_id: int = 1, message_id: int = 1) -> int:
        self.send(p_data_tf([pdv(context_id, c_echo_rq(message_id), command=True)]))
        return status_of(self.read_command())

    def release(self) -> None:
        self.send(a_release_rq())
        pdu_type, _ = self.read_pdu()
        if pdu_type != A_RELEASE_RP:
            raise ConnectionError(f"expected A-RELEASE-RP, got PDU type 0x{pdu_type:02X}")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawAssociation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def valid_echo_session(
    host: str, port: int, called_ae: str = "DICOM-ROUTER", timeout: float = 10.0
) -> int:
    """associate -> C-ECHO -> release over a raw socket; the C-ECHO status the peer answered."""
    with RawAssociation(host, port, timeout) as assoc:
        assoc.associate(called_ae, contexts=[(1, VERIFICATION, (IMPLICIT_VR_LE,))])
        assoc.accepted_context(1)
        status = assoc.echo(1)
        assoc.release()
        return status


def drain(sock: socket.socket, timeout: float, limit: int = 1 << 20) -> tuple[bytes, bool]:
    """What the peer sends within `timeout` (up to `limit` bytes), and whether it closed."""
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while len(received) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(received), False
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(received), True
            received += chunk
    except TimeoutError:
        return bytes(received), False
    except OSError:  # reset by the peer
        return bytes(received), True
    return bytes(received), False


def split_pdus(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete PDUs at the start of `data`, and the incomplete rest."""
    found: list[tuple[int, bytes]] = []
    offset = 0
    while offset + 6 <= len(data):
        pdu_type, _, length = struct.unpack_from(">BBI", data, offset)
        if offset + 6 + length > len(data):
            break
        found.append((pdu_type, data[offset + 6:offset + 6 + length]))
        offset += 6 + length
    return found, data[offset:]


def item_spans(data: bytes, start: int = 0) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every item header and value in `data`, sub-items included.

    `data` sits at offset `start` of its PDU and the spans are PDU offsets: they say where
    to cut a PDU to end it inside each kind of field.
    """
    spans: list[tuple[str, int, int]] = []
    offset = 0
    while offset + 4 <= len(data):
        item_type, _, size = struct.unpack_from(">BBH", data, offset)
        at = start + offset
        spans.append((f"item 0x{item_type:02X} header", at, at + 4))
        spans.append((f"item 0x{item_type:02X} value", at + 4, at + 4 + size))
        value = data[offset + 4:offset + 4 + size]
        if item_type == PRESENTATION_CONTEXT_RQ_ITEM:
            spans.append(("presentation context ID/reserved", at + 4, at + 8))
            spans += item_spans(value[4:], at + 8)
        elif item_type == USER_INFORMATION_ITEM:
            spans += item_spans(value, at + 4)
        offset += 4 + size
    return spans


def associate_rq_spans(rq: bytes) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every field of an A-ASSOCIATE-RQ: header, fixed part, items."""
    spans = [
        ("PDU type/reserved", 0, 2), ("PDU length", 2, 6),
        ("protocol version/reserved", 6, 10), ("called AE", 10, 26), ("calling AE", 26, 42),
        ("reserved 32 bytes", 42, 74),
    ]
    return spans + item_spans(rq[74:], 74)
