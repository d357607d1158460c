"""The dataset's P-DATA-TF PDUs are the same bytes whichever way they leave
(router/dicom/pdata_stream.py): buffered through the association's buffer (PDUs batched in
it, whatever its size), or by sendfile."""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from router.dicom import pdata_stream
from router.dicom.pdata_stream import (
    BATCH_BYTES,
    HEADER,
    SENDFILE_FROM,
    StreamError,
    stream_dataset,
)

CONTEXT = 5
OFFSET = 300  # where the dataset starts in the file (after a preamble and file meta)


class CountingSocket(socket.socket):
    """A real socket that counts its sendall calls."""

    sends = 0

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.sends += 1
        super().sendall(data, flags)


def _sent(path: Path, length: int, max_pdu: int, *, sendfile: bool,
          buffer_size: int = BATCH_BYTES, sends: list[int] | None = None) -> bytes:
    """What stream_dataset writes to a connected socket for `length` bytes at OFFSET."""
    left, theirs = socket.socketpair()
    ours = CountingSocket(fileno=left.detach())
    received = bytearray()

    def drain() -> None:
        while chunk := theirs.recv(1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    old = pdata_stream.SENDFILE_FROM
    pdata_stream.SENDFILE_FROM = 0 if sendfile else 1 << 62
    try:
        with path.open("rb") as fh:
            fh.seek(OFFSET)
            stream_dataset(ours, fh, length, CONTEXT, max_pdu, bytearray(buffer_size),
                           timeout=5)
            assert fh.tell() == OFFSET + length  # left after the dataset, either way
    finally:
        pdata_stream.SENDFILE_FROM = old
        if sends is not None:
            sends.append(ours.sends)
        ours.close()
    reader.join(5)
    theirs.close()
    return bytes(received)


def _pdus(wire: bytes) -> list[tuple[int, int, bytes]]:
    """(context, control header, fragment) of each P-DATA-TF PDU of one PDV."""
    pdus, pos = [], 0
    while pos < len(wire):
        kind, pdu_length, pdv_length, context, control = struct.unpack_from(
            ">BxIIBB", wire, pos)
        assert kind == 0x04 and pdu_length == pdv_length + 4
        pdus.append((context, control, wire[pos + HEADER:pos + 6 + pdu_length]))
        pos += 6 + pdu_length
    assert pos == len(wire)
    return pdus


@pytest.mark.parametrize("length", [1, 2, 99, 1000, 4089, 4090, 4091, 8180, 50_001])
def test_both_ways_send_the_same_pdus_and_the_dataset_exactly(tmp_path: Path,
                                                              length: int) -> None:
    data = os.urandom(OFFSET + length + 77)  # bytes after the dataset must not be sent
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    max_pdu = 4096  # a peer's maximum PDU length

    buffered = _sent(path, length, max_pdu, sendfile=False)
    by_sendfile = _sent(path, length, max_pdu, sendfile=True)
    one_pdu_at_a_time = _sent(path, length, max_pdu, sendfile=False,
                              buffer_size=HEADER + max_pdu - 6)
    odd_batches = _sent(path, length, max_pdu, sendfile=False,
                        buffer_size=3 * (HEADER + max_pdu - 6) + 100)

    assert by_sendfile == buffered == one_pdu_at_a_time == odd_batches
    pdus = _pdus(buffered)
    assert all(context == CONTEXT for context, _, _ in pdus)
    assert [control for _, control, _ in pdus] == [0] * (len(pdus) - 1) + [0x02]
    # Each PDU within the peer's maximum (a PDV header of 6 and up to 4,090 data bytes).
    assert all(len(fragment) % 2 == 0 and len(fragment) <= 4090 for _, _, fragment in pdus)
    dataset = b"".join(fragment for _, _, fragment in pdus)
    expected = data[OFFSET:OFFSET + length]
    assert dataset == expected + (b"\0" if length % 2 else b"")  # PS3.5 A.5's pad byte


def test_a_file_shorter_than_its_dataset_is_an_error_either_way(tmp_path: Path) -> None:
    path = tmp_path / "short.dcm"
    path.write_bytes(os.urandom(OFFSET + 5000))
    for sendfile in (False, True):
        with pytest.raises(OSError, match=r"ended \d+ bytes early"):
            _sent(path, 9000, 4096, sendfile=sendfile)


def test_a_pdu_too_small_for_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "instance.dcm"
    path.write_bytes(os.urandom(OFFSET + 100))
    with pytest.raises(StreamError, match="no room for data"):
        _sent(path, 100, 7, sendfile=False)


def test_large_datasets_over_plain_tcp_go_by_sendfile() -> None:
    assert SENDFILE_FROM <= 512 * 1024  # a 0.5 MB CT benefits too


def test_buffered_pdus_leave_in_batches(tmp_path: Path) -> None:
    # Over TLS a sendall per 16 KB PDU cost 30% more CPU than a batch (pdata_stream.py).
    length = 2 * BATCH_BYTES + 12_345
    path = tmp_path / "instance.dcm"
    path.write_bytes(os.urandom(OFFSET + length))
    sends: list[int] = []
    wire = _sent(path, length, 16384, sendfile=False, sends=sends)
    assert len(_pdus(wire)) == -(-length // (16384 - 6))  # PDUs of the peer's maximum
    assert sends == [3]  # whole PDUs up to the buffer's size per call, not one per PDU


def test_a_buffer_smaller_than_one_pdu_is_a_programming_error(tmp_path: Path) -> None:
    path = tmp_path / "instance.dcm"
    path.write_bytes(os.urandom(OFFSET + 100))
    with pytest.raises(ValueError, match="holds no PDU"):
        _sent(path, 100, 16384, sendfile=False, buffer_size=4096)


def test_an_empty_dataset_is_one_empty_pdv_marked_last(tmp_path: Path) -> None:
    path = tmp_path / "instance.dcm"
    path.write_bytes(os.urandom(OFFSET + 10))
    sends: list[int] = []
    wire = _sent(path, 0, 4096, sendfile=False, sends=sends)
    assert _pdus(wire) == [(CONTEXT, 0x02, b"")] and sends == [1]
