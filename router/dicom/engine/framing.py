"""Incremental PDU reader: bytes in any chunking -> framing units, never holding more than
a PDU header, one association-PDU body (bounded) or a PDV header.

P-DATA-TF bodies are not buffered: their PDV values come out as memoryview slices of the
caller's bytes as soon as they arrive (`PdvPiece`), so a dataset can go to a file PDV by
PDV. Limits are checked on the declared lengths, before anything is allocated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from router.dicom.engine.errors import AbortReason, DecodeError
from router.dicom.engine.pdus import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    PDU_HEADER,
    PDV_HEADER,
)

TLS_HANDSHAKE_RECORD = 0x16  # a TLS record's first byte, where a PDU type is expected
_FOUR_BYTE_PDUS = frozenset({A_ASSOCIATE_RJ, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT})
_ASSOCIATE_PDUS = frozenset({A_ASSOCIATE_RQ, A_ASSOCIATE_AC})

_HEADER, _BODY, _PDV_HEADER, _PDV_VALUE = range(4)
MAX_EMPTY_PDVS = 64


class PduUnit(NamedTuple):
    """A complete PDU other than P-DATA-TF."""

    pdu_type: int
    body: bytes


class PDataStart(NamedTuple):
    """A P-DATA-TF PDU header arrived (the state machine's Evt10 happens here)."""

    length: int


class PdvPiece(NamedTuple):
    """Part of a PDV value; ends_pdv on its last piece. control: the PDV's message control
    header (bit 0 command, bit 1 last fragment)."""

    context_id: int
    control: int
    data: memoryview
    ends_pdv: bool


Unit = PduUnit | PDataStart | PdvPiece


class PduReader:
    def __init__(self, max_pdata_length: int, max_associate_length: int) -> None:
        self.max_pdata_length = max_pdata_length
        self.max_associate_length = max_associate_length
        self._mode = _HEADER
        self._head = bytearray()  # partial PDU or PDV header
        self._body = bytearray()  # association PDU body being collected
        self._pdu_type = 0
        self._pdu_left = 0
        self._pdv_left = 0
        self._pdv_context = 0
        self._pdv_control = 0
        self._empty_pdvs = 0  # in a row

    @property
    def buffered(self) -> int:
        """Bytes held between calls (the property tests bound this)."""
        return len(self._head) + len(self._body)

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Unit]:
        view = memoryview(data)
        if view.format != "B":
            view = view.cast("B")
        pos, end = 0, len(view)
        while pos < end:
            mode = self._mode
            if mode == _PDV_VALUE:
                take = min(self._pdv_left, end - pos)
                self._pdv_left -= take
                self._pdu_left -= take
                done = self._pdv_left == 0
                yield PdvPiece(self._pdv_context, self._pdv_control, view[pos : pos + take], done)
                pos += take
                if done:
                    self._after_pdv()
            elif mode in (_HEADER, _PDV_HEADER):
                size = PDU_HEADER.size if mode == _HEADER else PDV_HEADER.size
                if not self._head and end - pos >= size:
                    header: bytes | memoryview = view[pos : pos + size]
                    pos += size
                else:
                    take = min(size - len(self._head), end - pos)
                    self._head += view[pos : pos + take]
                    pos += take
                    if len(self._head) < size:
                        break
                    header = bytes(self._head)
                    self._head.clear()
                if mode == _HEADER:
                    yield from self._start_pdu(*PDU_HEADER.unpack(header))
                else:
                    yield from self._start_pdv(*PDV_HEADER.unpack(header))
            else:
                take = min(self._pdu_left, end - pos)
                self._body += view[pos : pos + take]
                self._pdu_left -= take
                pos += take
                if self._pdu_left == 0:
                    body = bytes(self._body)
                    self._body.clear()
                    self._mode = _HEADER
                    yield PduUnit(self._pdu_type, body)

    def _start_pdu(self, pdu_type: int, length: int) -> Iterator[Unit]:
        if pdu_type == P_DATA_TF:
            if length > self.max_pdata_length:
                raise DecodeError(f"P-DATA-TF of {length} bytes exceeds {self.max_pdata_length}",
                                  limit="pdu")
            if length < PDV_HEADER.size:
                raise DecodeError(f"P-DATA-TF of {length} bytes holds no PDV")
            self._pdu_left = length
            self._mode = _PDV_HEADER
            yield PDataStart(length)
            return
        if pdu_type in _FOUR_BYTE_PDUS:
            if length != 4:
                raise DecodeError(f"PDU 0x{pdu_type:02X} of length {length}, not 4")
        elif pdu_type in _ASSOCIATE_PDUS:
            if length > self.max_associate_length:
                raise DecodeError(f"A-ASSOCIATE PDU of {length} bytes is over the limit",
                                  limit="pdu")
        elif pdu_type == TLS_HANDSHAKE_RECORD:
            # The commonest "unknown PDU" in the field: a sender set up for TLS.
            raise DecodeError("a TLS ClientHello on a plain (non-TLS) port: is the sender set "
                              "up for TLS? (PDU type 0x16)", AbortReason.UNRECOGNIZED_PDU)
        else:
            raise DecodeError(f"unrecognized PDU type 0x{pdu_type:02X}",
                              AbortReason.UNRECOGNIZED_PDU)
        self._pdu_type = pdu_type
        self._pdu_left = length
        self._mode = _BODY
        if length == 0:
            self._mode = _HEADER
            yield PduUnit(pdu_type, b"")

    def _start_pdv(self, length: int, context_id: int, control: int) -> Iterator[Unit]:
        self._pdu_left -= PDV_HEADER.size
        value = length - 2
        if value < 0 or value > self._pdu_left:
            raise DecodeError(f"PDV item length {length} does not fit its PDU")
        self._pdv_left = value
        self._pdv_context = context_id
        self._pdv_control = control
        self._mode = _PDV_VALUE
        if value == 0:
            # Legal, and useless: six bytes that cost a PDV's work each. A P-DATA-TF packed
            # with them took 0.5 s of CPU per MiB; no sender needs more than a few in a row.
            self._empty_pdvs += 1
            if self._empty_pdvs > MAX_EMPTY_PDVS:
                raise DecodeError(f"more than {MAX_EMPTY_PDVS} empty PDVs in a row")
            yield PdvPiece(context_id, control, memoryview(b""), True)
            self._after_pdv()
        else:
            self._empty_pdvs = 0

    def _after_pdv(self) -> None:
        if self._pdu_left == 0:
            self._mode = _HEADER
        elif self._pdu_left < PDV_HEADER.size:
            raise DecodeError("P-DATA-TF ends inside a PDV item header")
        else:
            self._mode = _PDV_HEADER
