"""One inbound connection: a thread, a blocking socket, the engine in the middle.

    TLS handshake (deadline) -> A-ASSOCIATE-RQ (deadline) -> rules -> AC or RJ
    -> C-ECHO answered inline; C-STORE datasets written as their PDVs arrive, then the store
       handler (spool commit, broker) and the C-STORE-RSP; relayed requests (queries,
       retrieves, N-services) decoded and served by the relay on a thread of their own,
       while this thread keeps reading (C-CANCEL, C-GET sub-operation answers)
    -> release or abort.

A thread per connection, not an event loop: the spool's group commit groups the syncs of
threads that commit at the same moment, and the broker hand-off blocks; the thread count is
bounded by listen.max_associations and the pending counts.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from router.acceptor import read_size
from router.acceptor.access import Rejection
from router.acceptor.connection_settings import AcceptorServices
from router.acceptor.fragment_runs import fragment_runs
from router.acceptor.negotiation import accept
from router.acceptor.other_requests import OtherRequests
from router.acceptor.relay_thread import RelayThread
from router.acceptor.requester_link import EngineRequesterLink
from router.acceptor.session import AssociationSession
from router.acceptor.store_intake import StoreIntake
from router.acceptor.tls_listener import peer_certificate, peer_certificate_der
from router.acceptor.tls_records import RecordReader
from router.core import metrics
from router.core.dimse_status import NO_REASON_GIVEN, Reject, Status
from router.dicom.engine import (
    DICOM_APPLICATION_CONTEXT,
    Abort,
    AbortReason,
    AssociateRJ,
    AssociateRQ,
    Association,
    AssociationRequested,
    CEchoRQ,
    CEchoRSP,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    DataFragment,
    Event,
    LocalProtocolError,
    OtherCommand,
    ReleaseRequested,
    ReleaseRP,
    RemoteProtocolError,
    SendCommand,
)
from router.dicom.engine.pdus import encode_pdu
from router.dicom.pending import Ticket
from router.dicom.quick_ack import ack_now, quick_ack_applies

log = logging.getLogger(__name__)

REQUEST_RECV_BYTES = 16 * 1024  # until then: a connection that has proved nothing is cheap
MAX_ASSOCIATE_BYTES = 256 * 1024  # an A-ASSOCIATE-RQ with a user identity fits easily
MAX_COMMAND_SET_BYTES = 64 * 1024  # a command set is a few hundred bytes
CLOSE_WAIT_SECONDS = 1.0  # after our RJ, RP or A-ABORT: the peer closes, or we do
APPLICATION_CONTEXT_NOT_SUPPORTED = Reject(1, 1, 2)
# The engine's limits (RemoteProtocolError.limit) -> dicom_router_connections_dropped_total.
LIMIT_LABELS = {"pdu": "pdu_too_large", "command": "message_too_large"}


class ConnectionEnded(Exception):
    """The association is over (the reason is logged and counted where it is raised)."""


class EngineConnection:
    def __init__(self, sock: socket.socket, address: tuple[str, int],
                 services: AcceptorServices, ticket: Ticket | None) -> None:
        self.sock = sock
        self.address = address
        self.services = services
        self.settings = services.settings
        self.ticket = ticket
        self.accepted_at = time.monotonic()  # the oldest pending one is closed first
        self.established = False
        self.session: AssociationSession | None = None
        self._send_lock = threading.Lock()
        self._aborted = False
        self._intake: StoreIntake | None = None  # once associated
        self._others: OtherRequests | None = None  # once associated
        self._link: EngineRequesterLink | None = None
        self._relays: RelayThread | None = None  # the association's relayed requests
        self._buffer = bytearray(REQUEST_RECV_BYTES)
        self._quick_ack = quick_ack_applies(sock)  # DCMTK senders' Nagle (dicom/quick_ack.py)
        self._records: RecordReader | None = None  # over TLS: read on past one record

    # --- the connection's life ------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except ConnectionEnded:
            pass
        except LocalProtocolError as exc:  # what the peer negotiated cannot carry an answer
            log.warning("closing the association from %s: %s", self.address[0], exc.message)
            metrics.CONNECTIONS_DROPPED.labels("protocol_error").inc()
            self.abort()
        except Exception:  # the thread's boundary: log, never a traceback to the peer
            log.exception("association from %s ended on an unexpected error", self.address[0])
            self.abort()
        finally:
            if self._relays is not None:
                self._relays.stop()
            if self._intake is not None:
                self._intake.discard()
            if self.session is not None:
                self.services.events.settle(self.session)
            if self.ticket is not None:
                self.ticket.release()
            with contextlib.suppress(OSError):
                self.sock.close()
            # The link, relay thread and request handlers hold this connection's bound
            # methods: without these cycles reference counting frees it (and its read buffer)
            # now, not at the next full collection, which senders that open an association
            # per instance or poll with C-ECHO kept far apart (10 KB of memory each).
            self._intake = self._others = self._link = self._relays = None
            self._buffer = bytearray()

    def _run(self) -> None:
        tls = self.services.tls
        if tls is not None:
            wrapped = tls.handshake(self.sock, self.address)
            if wrapped is None:
                return
            self.sock = wrapped
            self._records = RecordReader(wrapped)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        engine = Association.acceptor(
            max_pdu_length=2 * self.settings.offer.max_pdu,  # tolerant of peers that count
            max_associate_length=MAX_ASSOCIATE_BYTES,  # the PDV headers in, still bounded
            max_command_length=MAX_COMMAND_SET_BYTES,
            artim_timeout=self.settings.request_timeout)
        rq = self._read_request(engine)
        if self.ticket is not None:
            self.ticket.release()  # a decoded request: no longer pending for its source
        self._associate(engine, rq)
        self._serve(engine)

    def _read_request(self, engine: Association) -> AssociateRQ:
        deadline = time.monotonic() + self.settings.request_timeout
        view = memoryview(self._buffer)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._dropped(
                    "request_timeout", "no complete A-ASSOCIATE-RQ within "
                    f"association_request_timeout ({self.settings.request_timeout:g}s)")
            self.sock.settimeout(left)
            count = self._recv(view, "request_timeout", "no complete A-ASSOCIATE-RQ within "
                               f"association_request_timeout "
                               f"({self.settings.request_timeout:g}s)")
            for event in self._feed(engine, view[:count]):
                if isinstance(event, AssociationRequested):
                    return event.rq
            if engine.should_close:
                raise ConnectionEnded

    def _associate(self, engine: Association, rq: AssociateRQ) -> None:
        events, offer = self.services.events, self.settings.offer
        session = AssociationSession(
            calling_ae=rq.calling_ae, called_ae=rq.called_ae, address=self.address[0],
            port=int(self.address[1]), own_ae=offer.ae_title,
            certificate=peer_certificate(self.sock),
            certificate_der=peer_certificate_der(self.sock),
            user_identity=rq.user_info.identity is not None)
        self.session = session
        rejection: Rejection | None
        if rq.application_context != DICOM_APPLICATION_CONTEXT:
            rejection = Rejection(APPLICATION_CONTEXT_NOT_SUPPORTED, "application_context",
                                  f"application context {rq.application_context!r} is not "
                                  "DICOM's")
            events.rejected(session, rejection)
        else:
            rejection = events.admit(session, len(rq.contexts))
        identity = rq.user_info.identity
        if rejection is None and identity is not None and not events.identity_verified(
                identity.identity_type, identity.primary, identity.secondary or None):
            rejection = Rejection(NO_REASON_GIVEN, "user_identity", "user identity refused")
            events.rejected(session, rejection, (identity.identity_type, identity.primary))
        if rejection is not None:
            self._send(engine.send(AssociateRJ(*rejection.reject)))
            self._close_gently()
            raise ConnectionEnded
        ac = accept(rq, offer)
        self._send(engine.send(ac))
        self.established = True
        self._intake = StoreIntake(self.settings, self.services.store, session)
        events.accepted(session)
        self.sock.settimeout(self.settings.network_timeout)
        accepted = {ctx.context_id for ctx in ac.contexts if ctx.result == 0}
        abstract = {ctx.context_id: ctx.abstract_syntax for ctx in rq.contexts
                    if ctx.context_id in accepted}
        # The requester takes C-STOREs (C-GET) for the SOP classes it proposed the SCP role for.
        scp_roles = frozenset(role.sop_class_uid for role in ac.user_info.roles
                              if role.scp_role)
        self._link = EngineRequesterLink(engine, session.facts, abstract, scp_roles, self._write,
                                         self._send_lock, self.settings.response_timeout)
        if self.services.relay is not None:
            self._relays = RelayThread(self.services.relay, self._link,
                                       f"relay-{self.address[0]}", self._refuse_relayed)
        self._others = OtherRequests(self.settings, self.address[0], self._link, self._relays,
                                     session, self._send, self.abort, self._dropped)

    def _serve(self, engine: Association) -> None:
        self._buffer = bytearray(read_size.RECV_BYTES)
        view = memoryview(self._buffer)
        intake = self._intake
        assert intake is not None
        while True:
            count = self._recv(view, "network_timeout",
                               f"silent for network_timeout ({self.settings.network_timeout:g}s)")
            for event in fragment_runs(self._feed(engine, view[:count])):
                self._on_event(engine, event)
            if engine.should_close:
                return
            size = read_size.next_read_size(len(view), count, intake.receiving,
                                            intake.stored_so_far)
            if size != len(view):  # after the events: they may still refer to the old one
                self._buffer = bytearray(size)
                view = memoryview(self._buffer)

    # --- events ---------------------------------------------------------------------------

    def _on_event(self, engine: Association, event: Event | list[DataFragment]) -> None:
        if type(event) is list:
            self._on_data(engine, event)
        elif type(event) is CommandReceived:
            self._on_command(engine, event.context_id, event.command)
        elif type(event) is ReleaseRequested:
            if self._relays is not None:
                self._relays.stop(wait=True)  # its final responses go out before the RP
            self._send(engine.send(ReleaseRP()))
            self._close_gently()
            raise ConnectionEnded
        # Aborted, ProviderAborted, ConnectionClosed, TimedOut: engine.should_close is set.

    def _on_command(self, engine: Association, context_id: int, command: object) -> None:
        if type(command) is CStoreRQ:
            assert self._intake is not None and self._link is not None
            self._intake.begin(context_id, command,
                               self._link.abstract_syntaxes.get(context_id),
                               engine.accepted[context_id])
        elif type(command) is CEchoRQ:
            metrics.DIMSE_REQUESTS.labels("C-ECHO", f"0x{Status.SUCCESS:04X}").inc()
            self._send(engine.send(SendCommand(context_id, CEchoRSP(command.message_id,
                                                                    Status.SUCCESS))))
        elif isinstance(command, OtherCommand):
            assert self._others is not None
            self._others.command(engine, context_id, command)
        elif type(command) is CStoreRSP and self._link is not None:
            self._link.store_answered(command)  # a C-GET sub-operation's answer
        else:  # a response, where the router sent no request
            log.warning("ignoring an unexpected DIMSE response from %s", self.address[0])

    def _on_data(self, engine: Association, run: list[DataFragment]) -> None:
        """Adjacent fragments of one message's dataset (fragment_runs.py)."""
        if self.session is not None and self.session.progress is not None:
            self.session.progress.add(sum(len(event.data) for event in run))
        if self._intake is not None and self._intake.receiving:
            response = self._intake.take([event.data for event in run], run[-1].last)
            if response is not None:
                self._send(engine.send(response))
        else:
            assert self._others is not None
            for event in run:
                self._others.data(engine, event)

    def _refuse_relayed(self, why: str) -> None:
        """From the relay thread: a relayed request that cannot be served ends it all."""
        log.warning("aborting the association from %s: %s", self.address[0], why)
        metrics.CONNECTIONS_DROPPED.labels("protocol_error").inc()
        self.abort()

    # --- the socket ---------------------------------------------------------------------

    def _recv(self, view: memoryview, timeout_label: str, timeout_message: str) -> int:
        extended = False
        while True:
            try:
                count = self.sock.recv_into(view)
                break
            except TimeoutError:
                wait = self._silence_allowed()
                if wait is None:
                    if self.established:
                        self.abort()
                    raise self._dropped(timeout_label, timeout_message) from None
                self.sock.settimeout(wait)
                extended = True
            except OSError:
                return 0  # reset or broken: the engine sees the transport closed
        if extended:
            self.sock.settimeout(self.settings.network_timeout)
        if self._records is not None and count:
            count = self._records.fill(view, count)
        if self._quick_ack and count:
            ack_now(self.sock)
        return count

    def _silence_allowed(self) -> float | None:
        """How much longer an associated requester may stay silent, None when it has been
        silent for network_timeout. A requester waiting on a relayed request of its own is
        not idle: request_timeout bounds that request (and answers a failure status), and
        network_timeout counts from when the last one ended. Nor is the upstream of a
        relayed C-MOVE in progress, between the instances it sends for it on an association
        of its own: the move's request_timeout bounds it, and once no move waits for that AE
        network_timeout applies again."""
        link = self._link  # once: the connection's thread sets it to None when it ends
        if link is None:
            return None
        since = link.idle_since()
        if since is None:
            return self.settings.network_timeout
        left = since + self.settings.network_timeout - time.monotonic()
        if left > 0:
            return left
        return self.settings.network_timeout if self._sends_for_a_move() else None

    def _sends_for_a_move(self) -> bool:
        relay, session = self.services.relay, self.session
        return (relay is not None and session is not None
                and relay.awaits_move_instances(session.calling_ae))

    def _feed(self, engine: Association, data: memoryview) -> list[Event]:
        try:
            return engine.receive_data(data if data else b"")
        except RemoteProtocolError as exc:
            label = ("unknown_pdu_type" if exc.cause == AbortReason.UNRECOGNIZED_PDU
                     else LIMIT_LABELS.get(exc.limit, "protocol_error"))
            log.warning("%s from %s: %s", "rejecting the association" if exc.rejected
                        else "aborting the connection", self.address[0], exc.message)
            metrics.CONNECTIONS_DROPPED.labels(label).inc()
            if self.session is None:  # no request read: nothing else audits this peer
                self.services.events.malformed_request(self.address[0], exc.message)
            self._send(exc.to_send)
            self._close_gently()
            raise ConnectionEnded from None

    def _write(self, data: bytes) -> None:
        """For the relay's thread, which holds the send lock already."""
        if self._aborted:
            raise ConnectionError("the association was aborted")
        self.sock.sendall(data)

    def _send(self, data: bytes) -> None:
        if not data:
            return
        with self._send_lock:
            if self._aborted:
                raise ConnectionEnded
            try:
                self.sock.sendall(data)
            except OSError:
                raise ConnectionEnded from None

    def _dropped(self, label: str, message: str) -> ConnectionEnded:
        log.warning("closing connection from %s: %s", self.address[0], message)
        metrics.CONNECTIONS_DROPPED.labels(label).inc()
        return ConnectionEnded(message)

    def _close_gently(self) -> None:
        """After an RJ, RP or A-ABORT: let the peer read it and close first (closing with
        unread data would reset the connection and could destroy the PDU in flight)."""
        with contextlib.suppress(OSError):
            self.sock.settimeout(CLOSE_WAIT_SECONDS)
            deadline = time.monotonic() + CLOSE_WAIT_SECONDS
            while time.monotonic() < deadline and self.sock.recv(65536):
                pass

    def abort(self) -> None:
        """From any thread (drain, errors): A-ABORT if associated, then close the transport;
        the connection's own thread sees it closed and ends."""
        with self._send_lock:
            if self._aborted:
                return
            self._aborted = True
            if self.established:
                with contextlib.suppress(OSError):
                    self.sock.sendall(encode_pdu(Abort(0, 0)))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

