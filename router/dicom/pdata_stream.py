"""A spooled file's dataset onto an association's socket as P-DATA-TF PDUs.

One PDV per PDU, each fragment of even length; a dataset of odd length (a deflated stream)
gets the trailing NUL that PS3.5 A.5 asks for. Two ways, the same bytes on the wire:

- buffered: a header and a `readinto` per PDU into one buffer the association keeps, one
  `sendall` each. Small datasets (the file meta read already brought them into the file
  object's buffer) and TLS (the bytes must pass through the SSL object) go this way.
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


class StreamError(Exception):
    """The dataset could not be sent whole; the association must be aborted."""


def stream_dataset(sock: socket.socket, fh: BufferedReader, length: int, context: int,
                   buffer: bytearray, timeout: float) -> None:
    """Send the next `length` bytes of `fh` (positioned at the dataset) as the PDUs of one
    message, in PDUs of at most len(buffer) bytes. OSError for a file that ends early, a
    timeout or a broken connection; StreamError when the PDU size leaves no room for data."""
    room = (len(buffer) - HEADER) & ~1
    if room < 2:
        raise StreamError(f"a maximum PDU length of {len(buffer) - 6} bytes leaves no room "
                          "for data")
    sock.settimeout(timeout)
    if length >= SENDFILE_FROM and not isinstance(sock, ssl.SSLSocket):
        _by_sendfile(sock, fh, length, context, room, timeout)
    else:
        _buffered(sock, fh, length, context, buffer, room)


def _buffered(sock: socket.socket, fh: BufferedReader, length: int, context: int,
              buffer: bytearray, room: int) -> None:
    view = memoryview(buffer)
    unread, remaining = length, length + (length & 1)
    while True:
        n = min(room, remaining)
        want = min(n, unread)
        got = 0
        while got < want:
            read = fh.readinto(view[HEADER + got:HEADER + want])
            if not read:
                raise OSError(f"the file ended {unread - got} bytes early")
            got += read
        if want < n:
            buffer[HEADER + want] = 0  # the pad byte
        unread -= want
        remaining -= n
        control = MCH_LAST if remaining == 0 else 0
        PDU_AND_PDV_HEADER.pack_into(buffer, 0, P_DATA_TF, n + 6, n + 2, context, control)
        sock.sendall(view[:HEADER + n])
        if remaining == 0:
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
