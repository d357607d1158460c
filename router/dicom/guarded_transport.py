"""Bounds on what one inbound connection can make the acceptor wait for, buffer or leave behind.

pynetdicom trusts its peer: its DUL reads a PDU with a blocking recv() of whatever length the
peer declares, keeps unfinished command sets and non-C-STORE datasets in memory without a
limit, waits acse_timeout for an A-ASSOCIATE-RQ even from a connection that is already gone,
and leaves a half-received C-STORE file behind when an association ends mid-transfer. Each of
these lets one hostile or broken peer stall, bloat or fill the router (see
tests/integration/test_fuzz_acceptor.py). The pieces here close those gaps through
pynetdicom's own extension point, the server's request handler:

- `GuardedSocket` reads each PDU against a deadline (request_timeout, the ARTIM timer's job,
  until the A-ASSOCIATE-RQ is in, network_timeout of silence after), refuses declared
  lengths past the limits and PDU types PS3.8 does not define, and checks that every read
  is the header or the body it expects (pynetdicom skips the body of an unknown PDU: a
  guard that only alternated header/body once took the next header for a body and the
  3 GiB length after it for a header);
- `MessageGuard` (router/dicom/message_guard.py) bounds the command set and the in-memory dataset
  of each DIMSE message, and turns a full spool into 0xA700;
- `GuardedRequestHandler` runs the association to its end in the connection's thread and then
  settles what pynetdicom may not have: counters and partial files.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler

from router.core import metrics
from router.dicom.message_guard import (  # noqa: F401 (re-exported: one place to import guards)
    MAX_COMMAND_SET_BYTES,
    MessageGuard,
    discard_partial_message,
)
from router.dicom.relay_association import RouterAssociation

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
A_ABORT = 0x07
KNOWN_PDU_TYPES = frozenset(range(A_ASSOCIATE_RQ, A_ABORT + 1))  # PS3.8 9.3.1
HEADER_BYTES = 6


@dataclass(frozen=True)
class ReadLimits:
    """What one inbound connection may send before the acceptor gives up on it."""

    request_timeout: float  # from connect until the whole A-ASSOCIATE-RQ has arrived
    network_timeout: float  # longest silence in the middle of a PDU once associated
    max_pdu: int  # the Maximum Length the router advertised for P-DATA-TF
    max_other_pdu: int = 256 * 1024  # A-ASSOCIATE-RQ (user identity included) and the rest
    max_message_bytes: int = 8 * 1024 * 1024  # a dataset held in memory (not a C-STORE's)
    max_dataset_bytes: int | None = None  # a C-STORE dataset on disk; past it, not written

    def pdu_limit(self, pdu_type: int) -> int:
        # Tolerant of peers that count the PDV headers in, still bounded.
        return 2 * self.max_pdu if pdu_type == P_DATA_TF else self.max_other_pdu

    @property
    def largest_read(self) -> int:
        """No read is ever larger than this, whatever the state: the last line of defence."""
        return max(2 * self.max_pdu, self.max_other_pdu)


class ConnectionRefused(Exception):
    """The acceptor gives up on a connection; the message says why, for the operator, and
    `reason` is the metric label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class GuardedSocket(AssociationSocket):
    """An accepted connection whose reads are bounded in length and in time.

    pynetdicom's DUL reads a 6-byte PDU header, then the body of the length it declares.
    A read that cannot complete returns short, which the DUL handles as a closed
    connection (Evt17): no exception and no traceback for routine network trouble.
    """

    def __init__(self, assoc: Association, client_socket: Any, limits: ReadLimits,
                 replay: bytes = b"") -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.limits = limits
        self._replay = bytearray(replay)  # read before pynetdicom had the connection
        self._connected_at = time.monotonic()
        self._associated = False  # a whole A-ASSOCIATE-RQ has been read
        self._expect_header = True
        self._pdu_type = 0
        self._body_length = 0
        self._closing = False  # an unknown PDU type was seen: nothing more is read
        self._woken = False

    def recv(self, nr_bytes: int) -> bytearray:
        if self._closing:
            self._wake_acceptor()
            return bytearray()  # the DUL sees the connection closed (Evt17) and ends it
        try:
            if nr_bytes > self.limits.largest_read:
                raise ConnectionRefused(f"a read of {nr_bytes} bytes, more than any PDU the "
                                        f"router accepts", "pdu_too_large")
            if self._expect_header:
                return self._recv_header(nr_bytes)
            return self._recv_body(nr_bytes)
        except ConnectionRefused as exc:
            log.warning("closing connection from %s: %s", self._peer(), exc)
            metrics.CONNECTIONS_DROPPED.labels(exc.reason).inc()
        except OSError:
            pass  # reset or closed by the peer: the DUL sees a short read
        self._wake_acceptor()
        return bytearray()

    def close(self) -> None:
        super().close()
        self._wake_acceptor()

    @property
    def ready(self) -> bool:
        return bool(self._replay) or bool(super().ready)

    def _recv_header(self, nr_bytes: int) -> bytearray:
        if nr_bytes != HEADER_BYTES:
            raise ConnectionRefused(f"a read of {nr_bytes} bytes where a PDU header was due",
                                    "out_of_step")
        data = self._read(nr_bytes)
        if len(data) == HEADER_BYTES:
            pdu_type, _, length = struct.unpack(">BBL", data)
            if pdu_type not in KNOWN_PDU_TYPES:
                # pynetdicom answers Evt19 (A-ABORT, then close) without reading the body;
                # every later read is refused, so nothing after this header is taken in.
                log.warning("aborting the connection from %s: unrecognised PDU type 0x%02X",
                            self._peer(), pdu_type)
                metrics.CONNECTIONS_DROPPED.labels("unknown_pdu_type").inc()
                self._closing = True
                return data
            limit = self.limits.pdu_limit(pdu_type)
            if length > limit:
                raise ConnectionRefused(
                    f"PDU type 0x{pdu_type:02X} declares {length} bytes, more than the "
                    f"{limit} the router accepts", "pdu_too_large"
                )
            self._pdu_type, self._body_length, self._expect_header = pdu_type, length, False
        else:
            self._wake_acceptor()
        return data

    def _recv_body(self, nr_bytes: int) -> bytearray:
        if nr_bytes != self._body_length:
            raise ConnectionRefused(f"a read of {nr_bytes} bytes where a body of "
                                    f"{self._body_length} was due", "out_of_step")
        data = self._read(nr_bytes)
        if len(data) == nr_bytes:
            self._expect_header = True
            if self._pdu_type == A_ASSOCIATE_RQ:
                self._associated = True
        else:
            self._wake_acceptor()
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        """Read exactly nr_bytes unless the peer closes first; bounded by the deadlines."""
        assert self.socket is not None
        buffer = bytearray(nr_bytes)
        got = min(nr_bytes, len(self._replay))
        if got:
            buffer[:got] = self._replay[:got]
            del self._replay[:got]
        with memoryview(buffer) as view:
            while got < nr_bytes:
                self.socket.settimeout(self._time_left())
                try:
                    count = self.socket.recv_into(view[got:], nr_bytes - got)
                except TimeoutError:
                    raise self._stalled(got, nr_bytes) from None
                if count == 0:
                    break
                got += count
        del buffer[got:]
        return buffer

    def _time_left(self) -> float:
        if self._associated:
            return self.limits.network_timeout
        left = self._connected_at + self.limits.request_timeout - time.monotonic()
        if left <= 0:
            raise self._stalled(0, 0)
        return left

    def _stalled(self, got: int, wanted: int) -> ConnectionRefused:
        if not self._associated:
            return ConnectionRefused(
                f"no complete A-ASSOCIATE-RQ within association_request_timeout "
                f"({self.limits.request_timeout:g}s)", "request_timeout")
        return ConnectionRefused(
            f"silent for network_timeout ({self.limits.network_timeout:g}s) in the middle of a "
            f"PDU ({got} of {wanted} bytes)", "network_timeout")

    def _wake_acceptor(self) -> None:
        """A connection that ends before its association thread got a request frees its
        slot now: one whose A-ASSOCIATE-RQ was cut short, and one whose request was
        complete but did not decode (pynetdicom then aborts in the DUL and never hands a
        request to the association thread).

        pynetdicom's acceptor thread otherwise waits acse_timeout for a request that cannot
        come, counted in max_associations all the while. None in the queue is what its own
        timeout returns: it closes the connection and ends.
        """
        if self.assoc.requestor.primitive is None and not self._woken:
            self._woken = True
            self.assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]

    def _peer(self) -> str:
        return str(self.assoc.requestor.address or "?")


Finished = Callable[[Association], None]


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler with the guards in place, running the association in the
    connection's own thread (the server's) so that its end is seen whatever way it ends."""

    def handle(self) -> None:
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        try:
            assoc.join()  # this connection thread waits for its association's end
        finally:
            discard_partial_message(assoc)
            on_finished: Finished | None = getattr(self.server, "on_finished", None)
            if on_finished is not None:
                on_finished(assoc)

    def _create_association(self) -> Association:
        """As pynetdicom's, with a GuardedSocket and a MessageGuard."""
        limits: ReadLimits = self.server.limits  # type: ignore[attr-defined]
        assoc = RouterAssociation(self.ae, "acceptor")
        assoc.router_relay = getattr(self.server, "relay", None)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        take_replay = getattr(self.server, "take_replay", lambda request: b"")
        assoc.set_socket(GuardedSocket(assoc, self.request, limits, take_replay(self.request)))
        assoc.dimse.receive_primitive = MessageGuard(assoc, limits)  # type: ignore[method-assign]
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # Shared, not deep-copied as pynetdicom's handler does: negotiation only reads them
        # (router.dicom_net, pynetdicom's negotiate_as_acceptor), and a deepcopy of the ~220
        # contexts took 110 ms of the GIL per connection, before the peer had sent a byte.
        assoc.acceptor.supported_contexts = list(self.server.contexts)
        assoc.requestor.address_info = self.remote
        _bind_handlers(assoc, self.server._handlers)
        ticket = getattr(self.server, "ticket", lambda request: None)(self.request)
        if ticket is not None:
            # A decoded request: the connection no longer counts as pending for its source.
            assoc.bind(evt.EVT_REQUESTED, lambda event: ticket.release())
        return assoc


def _bind_handlers(assoc: Association, handlers: dict[Any, Any]) -> None:
    for event, bound in handlers.items():
        if event.is_intervention and bound:
            assoc.bind(event, *bound)
        elif isinstance(event, evt.NotificationEvent):
            for handler, args in bound:
                assoc.bind(event, handler, args)

