"""A TCP relay on 127.0.0.1 that carries client-to-server bytes at a set rate: a link slower
than the disk, for tests of what a sender holds while its peer has not taken the data. The
server-to-client direction may be slowed too (`back_rate`), and stall for good after
`stall_after` bytes: an upstream whose data trickles in, or stops coming. The
client-to-server direction stalls after `send_stall_after` bytes: an upstream that is the
client (a relayed C-MOVE's, storing to the router) whose data stops coming."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Self

_BLOCK = 64 * 1024
_BUFFER = 256 * 1024  # a link's, not loopback's megabytes


class SlowLink:
    """``with SlowLink(target_port, rate) as link:`` connect to ``link.port``."""

    def __init__(self, target_port: int, rate: float, back_rate: float = 0.0,
                 stall_after: int | None = None, send_stall_after: int | None = None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.back_rate = back_rate
        self.stall_after = stall_after
        self.send_stall_after = send_stall_after
        self.stalled = threading.Event()  # set once the link stopped carrying data
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
                for sock in (client, server):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
                threading.Thread(target=_pump, args=(client, server, self.rate,
                                                     self.send_stall_after, self.stalled),
                                 daemon=True).start()
                threading.Thread(target=_pump, args=(server, client, self.back_rate,
                                                     self.stall_after, self.stalled),
                                 daemon=True).start()


def _pump(source: socket.socket, target: socket.socket, rate: float,
          stall_after: int | None = None, stalled: threading.Event | None = None) -> None:
    carried = 0
    with contextlib.suppress(OSError):
        while data := source.recv(_BLOCK if not rate else min(_BLOCK, int(rate / 10) or 1)):
            if stall_after is not None and carried + len(data) > stall_after:
                target.sendall(data[:stall_after - carried])
                if stalled is not None:
                    stalled.set()
                while source.recv(_BLOCK):  # stalled: dropped until one side closes
                    pass
                break
            target.sendall(data)
            carried += len(data)
            if rate:
                time.sleep(len(data) / rate)
    for sock in (source, target):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
