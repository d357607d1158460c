"""A spooled file's dataset onto an association's socket as P-DATA-TF PDUs.

One PDV per PDU, each fragment of even length; a dataset of odd length (a deflated stream)
gets the trailing NUL that PS3.5 A.5 asks for. Two ways, the same bytes on the wire:

- buffered: a header and a `readinto` per PDU into one buffer the association keeps, as
  many PDUs as it holds (BATCH_BYTES) per `sendall`. Small datasets (the file meta read
  already brought them into the file object's buffer) and TLS (the bytes must pass through
  the SSL object) go this way. A `sendall` per PDU cost a 50 MB instance 93-142 ms of CPU
  over TLS into a peer taking 16 KB PDUs, where a batch costs 68-91 (a 16,396-byte PDU is a
  full TLS record and a 12-byte one; 3,200 calls): measured over loopback TLS, 2026-12-06.
  PDUs of 128 KB: the same either way.
- sendfile: a large dataset over plain TCP goes from the page cache to the socket in the
  kernel (`os.sendfile`), after each PDU's 12-byte header sent with MSG_MORE, so that the
  header leaves in the same segment as its data. Measured with `python -m loadtest.sender`
  (the README's "What changed" table has the figures).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from io import BufferedReader

from router.dicom.engine.pdus import MCH_LAST, P_DATA_TF, PDU_AND_PDV_HEADER

HEADER = PDU_AND_PDV_HEADER.size  # PDU header (6) + PDV header (6)
# Below this a dataset goes buffered: the file meta read has most of it in memory already,
# and the kernel's way costs a syscall more per PDU.
SENDFILE_FROM = 256 * 1024
BATCH_BYTES = 256 * 1024  # what an association's send buffer holds at least: PDUs per sendall


class StreamError(Exception):
    """The dataset could not be sent whole; the association must be aborted."""


def stream_dataset(sock: socket.socket, fh: BufferedReader, length: int, context: int,
                   max_pdu: int, buffer: bytearray, timeout: float) -> None:
    """Send the next `length` bytes of `fh` (positioned at the dataset) as the PDUs of one
    message, each PDU's variable field at most `max_pdu` bytes (the peer's maximum), through
    `buffer` (at least one such PDU: HEADER + max_pdu - 6 bytes). OSError for a file that
    ends early, a timeout or a broken connection; StreamError when the PDU size leaves no
    room for data."""
    room = (max_pdu - 6) & ~1  # a PDV header of 6, then data of even length
    if room < 2:
        raise StreamError(f"a maximum PDU length of {max_pdu} bytes leaves no room for data")
    if len(buffer) < HEADER + room:
        raise ValueError(f"a send buffer of {len(buffer)} bytes holds no PDU of {max_pdu}")
    sock.settimeout(timeout)
    if length >= SENDFILE_FROM and not isinstance(sock, ssl.SSLSocket):
        _by_sendfile(sock, fh, length, context, room, timeout)
    else:
        _buffered(sock, fh, length, context, buffer, room)


def _buffered(sock: socket.socket, fh: BufferedReader, length: int, context: int,
              buffer: bytearray, room: int) -> None:
    view = memoryview(buffer)
    unread, remaining = length, length + (length & 1)
    fill = 0  # bytes of whole PDUs in the buffer, not sent yet
    while True:  # once at least: an empty dataset is one empty PDV marked last
        n = min(room, remaining)
        if fill + HEADER + n > len(buffer):
            sock.sendall(view[:fill])
            fill = 0
        data = fill + HEADER
        want = min(n, unread)
        got = 0
        while got < want:
            read = fh.readinto(view[data + got:data + want])
            if not read:
                raise OSError(f"the file ended {unread - got} bytes early")
            got += read
        if want < n:
            buffer[data + want] = 0  # the pad byte
        unread -= want
        remaining -= n
        control = MCH_LAST if remaining == 0 else 0
        PDU_AND_PDV_HEADER.pack_into(buffer, fill, P_DATA_TF, n + 6, n + 2, context, control)
        fill = data + n
        if remaining == 0:
            sock.sendall(view[:fill])
            return


def _by_sendfile(sock: socket.socket, fh: BufferedReader, length: int, context: int,
                 room: int, timeout: float) -> None:
    offset = fh.tell()  # the dataset's start; sendfile leaves the file's position alone
    source, target = fh.fileno(), sock.fileno()
    unread, remaining = length, length + (length & 1)
    header = bytearray(HEADER)
    while remaining:
        n = min(room, remaining)
        want = min(n, unread)
        remaining -= n
        control = MCH_LAST if remaining == 0 else 0
        PDU_AND_PDV_HEADER.pack_into(header, 0, P_DATA_TF, n + 6, n + 2, context, control)
        sock.sendall(header, socket.MSG_MORE)
        _sendfile_all(target, source, offset, want, timeout)
        offset += want
        unread -= want
        if want < n:
            sock.sendall(b"\0")  # the pad byte
    fh.seek(offset)


def _sendfile_all(target: int, source: int, offset: int, count: int, timeout: float) -> None:
    """os.sendfile until `count` bytes went, waiting at most `timeout` for room each time
    (the socket has a timeout, so its descriptor is non-blocking)."""
    poller: select.poll | None = None
    while count:
        try:
            sent = os.sendfile(target, source, offset, count)
        except BlockingIOError:
            sent = -1
        if sent == 0:
            raise OSError(f"the file ended {count} bytes early")
        if sent > 0:
            offset += sent
            count -= sent
            continue
        if poller is None:
            poller = select.poll()
            poller.register(target, select.POLLOUT)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"the peer took nothing for {timeout:g} s")
