"""The acceptor's side of one relayed request: a socket of its own to the broker, the
request out, answers in as they come, C-CANCEL and acknowledgements back, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from router.core.errors import ProtocolError, RouterError
from router.core.messages import (
    Message,
    RelayAck,
    RelayCancel,
    RelayProbe,
    RelayRequest,
    RelayResponse,
    RelayStore,
    decode,
    encode,
)

POLL_SECONDS = 0.1  # how often a waiting relay looks at C-CANCEL and the requester
CANCEL_LINGER_MS = 1000  # zmq_close returns at once; only the cancel may wait this long
# After this long without an answer the call asks the broker whether it still carries the
# request: a broker restarted since knows nothing of it and answers with a failure, so the
# requester hears within seconds, not at request_timeout (120 s by default).
PROBE_SECONDS = 5.0


class RelayTimeout(RouterError):
    """No answer from the worker within request_timeout: the requester gets a failure."""


class RouterStopping(RouterError):
    """The acceptor is stopping (its ZeroMQ context is terminated): the requester gets the
    failure to retry, as a C-STORE gets 0xA700 (router/acceptor/broker_client.py)."""


Answer = tuple[RelayResponse | RelayStore, bytes | None]


class RelayCall:
    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str,
                 request: RelayRequest, payload: bytes | None, timeout: float,
                 hold: float = 0.0) -> None:
        self.request = request
        self.timeout = timeout
        # Before its first word: the broker may hold it this long (a storage commitment
        # waiting for its instances, router/broker/commitment_holds.py).
        self.hold = hold
        # A word came from the router: a storage commitment the broker held has gone on to a
        # worker (the broker tells it so first), so the upstream may have it.
        self.heard = False
        self.cancelled = False
        self.finished = False  # the final answer came
        try:
            self.sock = context.socket(zmq.DEALER)
        except zmq.ContextTerminated:
            raise RouterStopping("router stopping; retry later") from None
        try:
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.connect(endpoint)
            self._send(request, payload)
        except (RouterStopping, zmq.ContextTerminated):
            self.sock.close()
            raise RouterStopping("router stopping; retry later") from None
        self.last_heard = self.last_probe = time.monotonic()

    def _send(self, message: Message, payload: bytes | None = None) -> None:
        try:
            self.sock.send_multipart([encode(message), *([payload] if payload else [])])
        except zmq.ContextTerminated:
            raise RouterStopping("router stopping; retry later") from None

    def poll(self, cancelled: Callable[[], bool], wait: float = POLL_SECONDS) -> Answer | None:
        """The next answer if one comes within `wait`; None otherwise. Sends C-CANCEL once
        `cancelled()` turns true; raises RelayTimeout after `timeout` of silence and
        RouterStopping once the acceptor stops."""
        if not self.cancelled and cancelled():
            self.cancel()
        try:
            ready = self.sock.poll(int(wait * 1000))
            frames = self.sock.recv_multipart() if ready else []
        except zmq.ContextTerminated:
            raise RouterStopping("router stopping; retry later") from None
        if ready:
            # Any word counts, a RelayProgress too (data still arriving from the upstream):
            # request_timeout is silence, not the length of a transfer.
            self.last_heard = time.monotonic()
            self.hold = 0.0
            self.heard = True
            try:
                message = decode(frames[0])
            except ProtocolError:
                return None
            if isinstance(message, RelayResponse | RelayStore) and \
                    message.request_id == self.request.request_id:
                if isinstance(message, RelayResponse) and message.final:
                    self.finished = True
                return message, frames[1] if len(frames) > 1 else None
            return None
        now = time.monotonic()
        if now - self.last_heard > self.timeout + self.hold:
            raise RelayTimeout(f"no answer from the router's worker within {self.timeout:.0f}s")
        if now - max(self.last_heard, self.last_probe) >= PROBE_SECONDS:
            self.last_probe = now
            self._send(RelayProbe(self.request.request_id, self.request.command))
        return None

    def next(self, cancelled: Callable[[], bool]) -> Answer:
        while True:
            answer = self.poll(cancelled)
            if answer is not None:
                return answer

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._send(RelayCancel(self.request.request_id))

    def ack(self) -> None:
        self._send(RelayAck(self.request.request_id))

    def close(self) -> None:
        """Closing before the final answer (a timeout, a requester gone) cancels the request:
        the worker stops its upstream and takes no more C-GET instances into relay/ that
        nobody would pass on. The socket lingers a moment so that the cancel leaves. Once the
        acceptor is stopping there is nobody to tell: the socket just closes, which is what
        its context's term() waits for."""
        if not self.finished and not self.cancelled:
            try:
                self.cancel()
                self.sock.setsockopt(zmq.LINGER, CANCEL_LINGER_MS)
            except (RouterStopping, zmq.ContextTerminated):
                pass
        self.sock.close()
