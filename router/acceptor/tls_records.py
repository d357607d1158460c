"""A TLS socket hands the acceptor one record (at most 16 KiB of data) per read, where a
plain socket hands it everything that has arrived, up to the connection's buffer (256 KiB;
1 MiB while a dataset past 2 MiB arrives, connection.py): a
50 MB C-STORE over TLS went through the engine, the store intake and a write() about 3,200
times instead of about 200. `RecordReader.fill` reads on while more is there already.

"There" is judged on the raw socket, which cannot tell a record of data from one of TLS's
own (a TLS 1.3 KeyUpdate): a peer that sent one of those last and then waited for an answer
would have it only after network_timeout, when the read gives up and the bytes before it are
served. Implementations send a KeyUpdate before more data, not after their last.
"""

from __future__ import annotations

import select
import ssl


class RecordReader:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def fill(self, view: memoryview, count: int) -> int:
        """`view` holds `count` bytes from a read; read on into the rest of it while the
        next bytes are there (decrypted in the TLS object, or arrived on the socket), and
        return the new count. Waits only for the rest of a record whose first bytes are
        there; an error or the end of the stream is left to the next read, which meets
        it again."""
        sock = self._sock
        while count < len(view) and (sock.pending() or self._poll.poll(0)):
            try:
                got = sock.recv_into(view[count:])
            except (OSError, ValueError):  # TimeoutError and ssl.SSLError are OSErrors
                break
            if not got:
                break
            count += got
        return count
