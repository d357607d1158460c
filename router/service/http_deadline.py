"""Bounds on what one HTTP client may hold: a deadline for its whole request (a socket timeout
bounds each recv only, so a byte every few seconds would hold a thread for ever) and its body
size, decided from the head before any byte of the body is read."""

from __future__ import annotations

import io
import socket
import time
from email.message import Message

# A body earns its request this much more time per byte (1 MB/s: a slow VPN still sends
# the rule tester's 64 MiB, in request_timeout + 64 s at most).
BODY_BYTES_PER_SECOND = 1_000_000


class DeadlineReader(io.RawIOBase):
    """Reads a socket until a deadline, then raises TimeoutError: however slowly a client
    sends, its request is over at the deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestDeadline("the request was not sent whole in time")
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(buffer)
        except TimeoutError:
            raise RequestDeadline("the request was not sent whole in time") from None


class RequestDeadline(TimeoutError):
    """The client's request did not arrive whole before its deadline."""


class BadHead(Exception):
    """A request head the server refuses before reading a body: the status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def body_length(headers: Message, limit: int) -> int:
    """The body's length from Content-Length; BadHead when it is chunked, not a number, or
    more than `limit`."""
    if headers.get("Transfer-Encoding") is not None:
        # Bodies are small JSON or forms: nothing here needs to stream one.
        raise BadHead(411, "Transfer-Encoding is not supported: send Content-Length")
    values = {v.strip() for v in headers.get_all("Content-Length") or []}
    if len(values) > 1:
        raise BadHead(400, "conflicting Content-Length headers")
    text = values.pop() if values else "0"
    if not (text.isascii() and text.isdigit()):
        raise BadHead(400, "Content-Length is not a number of bytes")
    length = int(text)
    if length > limit:
        raise BadHead(413, f"request body too large: at most {limit} bytes here")
    return length
