"""The acceptor's side of the broker: submit a job, wait for its acceptance, with a deadline.

A submit is re-sent every RESEND_SECONDS until answered: the broker queues a job once per job
id, so a re-send is harmless, and it carries a job over a broker restart (a message in flight
to a broker that died is lost with it) instead of failing the sender after the deadline.
"""

from __future__ import annotations

import contextlib
import threading
import time

import zmq

from router.core.errors import CompletionShareFull, OutOfResources, ProtocolError, QueueFull
from router.core.messages import Accepted, JobHeader, Refused, Submit, decode, encode

RESEND_SECONDS = 1.0


class BrokerClient:
    """Thread-safe: each submit checks a DEALER socket out of a pool (a socket serves one
    thread at a time; the lock hand-over is the memory barrier ZeroMQ asks for)."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str, timeout: float):
        self.context = context
        self.endpoint = endpoint
        self.timeout = timeout
        self._idle: list[zmq.Socket[bytes]] = []
        self._lock = threading.Lock()

    def _checkout(self) -> zmq.Socket[bytes]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def checkin(self, sock: zmq.Socket[bytes]) -> None:
        """A socket whose submit was answered, back for the next (PendingSubmit.wait)."""
        with self._lock:
            self._idle.append(sock)

    def send(self, job: JobHeader) -> PendingSubmit:
        """Send the submit now and hear the answer later (PendingSubmit.wait), so the caller's
        own work (the job record's group sync) overlaps the broker's."""
        try:
            sock = self._checkout()
        except zmq.ZMQError:
            if not self.context.closed:
                raise
            raise OutOfResources("router stopping; retry later") from None
        frame = encode(Submit(job))
        try:
            sock.send(frame)
        except zmq.ContextTerminated:
            sock.close()
            raise OutOfResources("router stopping; retry later") from None
        except BaseException:
            sock.close()
            raise
        return PendingSubmit(self, sock, job.job_id, frame, time.monotonic() + self.timeout)

    def close(self) -> None:
        with self._lock:
            for sock in self._idle:
                sock.close()
            self._idle.clear()


class PendingSubmit:
    """A submit sent and not yet answered. wait() exactly once: it returns the socket."""

    def __init__(self, client: BrokerClient, sock: zmq.Socket[bytes], job_id: str,
                 frame: bytes, deadline: float) -> None:
        self._client, self._sock, self._job_id = client, sock, job_id
        self._frame, self._deadline = frame, deadline

    def wait(self) -> None:
        """Return once the broker queued the job; raise QueueFull if it refused it and
        OutOfResources if it stayed silent past the deadline."""
        sock, healthy = self._sock, False
        try:
            resend_at = time.monotonic() + RESEND_SECONDS
            while (remaining := self._deadline - time.monotonic()) > 0:
                wait = min(remaining, max(0.0, resend_at - time.monotonic()))
                if not sock.poll(int(wait * 1000) + 1):
                    if time.monotonic() >= resend_at:
                        with contextlib.suppress(zmq.Again):  # no broker connected right now
                            sock.send(self._frame, zmq.NOBLOCK)
                        resend_at = time.monotonic() + RESEND_SECONDS
                    continue
                try:
                    reply = decode(sock.recv())
                except ProtocolError:
                    continue
                if isinstance(reply, Accepted) and reply.job_id == self._job_id:
                    healthy = True
                    return
                if isinstance(reply, Refused) and reply.job_id == self._job_id:
                    healthy = True
                    full = (CompletionShareFull if reply.reason.startswith(
                        CompletionShareFull.PREFIX) else QueueFull)
                    raise full(f"router busy: {reply.reason}; retry later")
                # Anything else is a late reply to an earlier, timed-out submit: skip it.
            raise OutOfResources("router queue did not answer in time; retry later")
        except zmq.ContextTerminated:
            # The acceptor is stopping (its supervisor is gone): the job stays on the spool,
            # recovered at the next start; the sender is told to retry, not a traceback.
            raise OutOfResources("router stopping; retry later") from None
        finally:
            if healthy:
                self._client.checkin(sock)
            else:
                sock.close()  # a socket with a reply still due would confuse the next submit
