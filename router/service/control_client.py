"""The HTTP process's side of operator control: ask the broker, wait for its answer.

A DEALER socket per request, on the broker's frontend ROUTER (where acceptors submit): the
HTTP server runs one thread per request and a ZeroMQ socket serves one thread. Operator
actions are rare, so a fresh socket costs nothing that matters and never carries a late reply
of an earlier, timed-out request.
"""

from __future__ import annotations

import secrets
import time

import zmq

from router.core.errors import ProtocolError, RouterError
from router.core.messages import Control, ControlReply, decode, encode


class BrokerUnavailable(RouterError):
    """The broker did not answer in time (restarting, or stopped)."""


class ControlClient:
    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.endpoint = endpoint
        self.timeout = timeout

    def request(self, action: str, destination: str, target: str = "", actor: str = "",
                source: str = "") -> ControlReply:
        request_id = secrets.token_hex(8)
        message = Control(request_id, action, destination, target, actor, source)
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.endpoint)
            sock.send(encode(message))
            deadline = time.monotonic() + self.timeout
            while (remaining := deadline - time.monotonic()) > 0:
                if not sock.poll(int(remaining * 1000) + 1):
                    break
                try:
                    reply = decode(sock.recv())
                except ProtocolError:
                    continue
                if isinstance(reply, ControlReply) and reply.request_id == request_id:
                    return reply
        finally:
            sock.close()
        raise BrokerUnavailable(f"the broker did not answer within {self.timeout:.0f}s "
                                "(restarting?); the action may or may not have been applied: check "
                                "`dicom-router destinations list` and try again")
