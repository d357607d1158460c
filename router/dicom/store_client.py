"""A C-STORE SCU association on the router's own engine (router/dicom/engine), driven over
a blocking socket (scu_socket.py; how it fails: store_failures.py).

One blocking socket per association, used by one thread at a time (the pool hands it out).
`StoreAssociation.open` connects (TLS when asked), negotiates and returns an established
association or raises `AssociationFailed` saying what happened; `store` streams a spooled
file as P-DATA (pdata_stream.py: through one buffer allocated per association, PDUs of the
peer's maximum length batched in it, or from the page cache by sendfile), never the whole
file in memory; the engine encodes the command, checks every state change and decodes what the
peer says.

Every wait has a deadline: connect_timeout for TCP and TLS, the ACSE wait for the
A-ASSOCIATE answer and the A-RELEASE-RP, dimse_timeout for each write, and for the response
dimse_timeout plus one second per MB of the dataset (response_wait).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from io import BufferedReader

from router.dicom.engine import Abort as AbortPdu
from router.dicom.engine import (
    Aborted,
    AssociateRQ,
    Association,
    AssociationAccepted,
    AssociationRejected,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    Event,
    PresentationContextRQ,
    ProtocolError,
    ProviderAborted,
    ReleaseConfirmed,
    ReleaseRequested,
    ReleaseRP,
    ReleaseRQ,
    RemoteProtocolError,
    SendCommand,
    SendData,
    UserInformation,
)
from router.dicom.pdata_stream import BATCH_BYTES, HEADER, StreamError, stream_dataset
from router.dicom.scu_socket import (
    PROTOCOL_ERROR,
    RECEIVE_BUFFER,
    Peer,
    connect,
    describe,
    is_alert,
    negotiate,
    receive,
    send_all,
)
from router.dicom.store_failures import AssociationFailed, StoreFailed

# The router's implementation class UID (a UUID-derived UID, PS3.5 B.2) and version name.
IMPLEMENTATION_CLASS_UID = "2.25.326976319741938469149805463924233421850"
IMPLEMENTATION_VERSION = "DICOM_ROUTER"
# A P-DATA-TF's variable field must hold a PDV header (6) and two bytes of data (the dataset
# is sent in even lengths): a peer that advertises less can be sent nothing.
MIN_SEND_LIMIT = 8
# A-ASSOCIATE-AC presentation context result (PS3.8 9.3.3.2): the peer does not take the SOP
# class at all, in any syntax (4 is "transfer syntaxes not supported": another may do).
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3

# The slowest a destination may store an instance before it answers (README "Instances of
# several GB"): the same allowance as a DICOMweb upload's.
RESPONSE_BYTES_PER_SECOND = 1_000_000


def response_wait(dimse_timeout: float, dataset_length: int) -> float:
    """How long to wait for a C-STORE response once the last byte went: `dimse_timeout`
    plus one second per MB of the dataset. A PACS that writes a 4 GB instance to its own
    storage before it answers (dcm4chee, Orthanc) may take minutes: `dimse_timeout` alone
    counted that as a failure, and every retry sent the 4 GB again."""
    return dimse_timeout + dataset_length / RESPONSE_BYTES_PER_SECOND


def _refusal_hint(sock: socket.socket) -> str:
    """Words for a close without an answer over TLS 1.3: such a peer judges the router's
    certificate after the handshake, and its close often beats its alert (a wrong client
    certificate read as a plain close three times in four against storescp +tls -rc)."""
    if isinstance(sock, ssl.SSLSocket) and sock.version() == "TLSv1.3":
        return (" right after the TLS 1.3 handshake: most likely it refused the router's "
                "certificate (tls.cert) or wanted one; its log says why")
    return ""


class StoreAssociation:
    """An established association; `accepts` says which (SOP class, syntax) it carries."""

    def __init__(self, peer: Peer, sock: socket.socket, engine: Association,
                 acse_timeout: float) -> None:
        self.peer = peer
        self._sock = sock
        self._engine = engine
        self._acse_timeout = acse_timeout
        self._contexts: dict[tuple[str, str], int] = {}
        assert engine.rq is not None
        self._proposed = frozenset((ctx.abstract_syntax, syntax) for ctx in engine.rq.contexts
                                   for syntax in ctx.transfer_syntaxes)
        for ctx in engine.rq.contexts:
            syntax = engine.accepted.get(ctx.context_id)
            if syntax is not None and syntax in ctx.transfer_syntaxes:
                self._contexts.setdefault((ctx.abstract_syntax, syntax), ctx.context_id)
        # The SOP classes refused as such: no other syntax is worth proposing for them.
        results = {c.context_id: c.result for c in engine.ac.contexts} if engine.ac else {}
        self.unsupported = frozenset(
            ctx.abstract_syntax for ctx in engine.rq.contexts
            if results.get(ctx.context_id) == ABSTRACT_SYNTAX_NOT_SUPPORTED)
        self._rx = bytearray(RECEIVE_BUFFER)
        # One send buffer for the association's life: PDUs filled by readinto, as many as it
        # holds per send (at least one of the peer's largest).
        self._tx = bytearray(max(BATCH_BYTES, HEADER + engine.send_limit - 6))
        self._message_id = 0
        self._open = True

    # --- establishing -------------------------------------------------------------------

    @classmethod
    def open(cls, peer: Peer, contexts: list[tuple[str, str]],
             acse_timeout: float) -> StoreAssociation:
        """Connect and negotiate one presentation context per (SOP class, syntax)."""
        sock = connect(peer)
        hint = _refusal_hint(sock)  # now: once the peer has closed, the version is gone
        engine = Association.requestor(max_pdu_length=peer.max_pdu)
        rq = AssociateRQ(
            peer.called_ae, peer.calling_ae,
            tuple(PresentationContextRQ(2 * i + 1, sop, (ts,))
                  for i, (sop, ts) in enumerate(contexts)),
            UserInformation(max_length=peer.max_pdu,
                            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                            implementation_version_name=IMPLEMENTATION_VERSION))
        started = time.monotonic()
        try:
            send_all(sock, engine.send(rq), acse_timeout)
            answer = negotiate(sock, engine, started + acse_timeout)
        except ssl.SSLError as exc:
            if not is_alert(exc):
                sock.close()
                raise AssociationFailed("closed", "closed the connection during negotiation "
                                        f"({describe(exc)}){hint}", connected=True,
                                        waited=time.monotonic() - started) from exc
            # TLS 1.3 peers judge our certificate after the handshake: their alert (e.g.
            # certificate_required) comes with the answer to the A-ASSOCIATE-RQ.
            sock.close()
            raise AssociationFailed("tls", f"TLS failed during negotiation: {exc.reason or exc}",
                                    connected=True, waited=time.monotonic() - started,
                                    tls_error=exc) from exc
        except OSError as exc:  # the request could not be written: reset
            sock.close()
            raise AssociationFailed("closed", f"closed the connection during negotiation "
                                    f"({describe(exc)}){hint}", connected=True,
                                    waited=time.monotonic() - started) from exc
        except BaseException:
            sock.close()
            raise
        waited = time.monotonic() - started
        if isinstance(answer, AssociationAccepted):
            assoc = cls(peer, sock, engine, acse_timeout)
            if not assoc._contexts:
                assoc.abort()  # as pynetdicom did: an association without a context is useless
                raise AssociationFailed("no_context", "accepted none of the proposed contexts",
                                        connected=True, waited=waited,
                                        unsupported=assoc.unsupported)
            return assoc
        if answer is None:  # say so, as pynetdicom did, before leaving
            with contextlib.suppress(OSError, ProtocolError):
                send_all(sock, engine.send(AbortPdu()), 1.0)
        sock.close()
        if isinstance(answer, AssociationRejected):
            rj = answer.rj
            raise AssociationFailed(
                "rejected", f"rejected the association: {rj.describe()}", connected=True,
                rejection=rj, waited=waited)
        if isinstance(answer, Aborted):
            raise AssociationFailed("aborted", "aborted the association during negotiation",
                                    connected=True, abort=(answer.source, answer.reason),
                                    waited=waited)
        if answer is None:
            raise AssociationFailed("no_answer", f"did not answer the association request "
                                    f"within {acse_timeout:g} s", connected=True, waited=waited)
        raise AssociationFailed("closed", f"closed the connection during negotiation{hint}",
                                connected=True, waited=waited)

    # --- state --------------------------------------------------------------------------

    def accepts(self, sop_class: str, syntax: str) -> bool:
        return (sop_class, syntax) in self._contexts

    def refused(self, sop_class: str, syntax: str) -> bool:
        """Proposed on this association and not accepted: asking again gets the same."""
        return (sop_class, syntax) in self._proposed and (sop_class, syntax) not in self._contexts

    @property
    def is_established(self) -> bool:
        """Still usable: reads (without blocking) what an idle peer may have sent, so that
        one that released, aborted or closed meanwhile is noticed before the next use."""
        if self._open:
            self._poll()
        return self._open

    def _poll(self) -> None:
        try:
            pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0
            if not pending and not select.select([self._sock], [], [], 0)[0]:
                return
            self._sock.settimeout(0)
            try:
                n = self._sock.recv_into(self._rx)
            finally:
                self._sock.settimeout(self.peer.dimse_timeout)
        except (ssl.SSLWantReadError, BlockingIOError):
            return  # a TLS record without application data (a session ticket)
        except (OSError, ValueError):
            self._close()
            return
        try:
            events = self._engine.receive_data(memoryview(self._rx)[:n])
        except ProtocolError as exc:
            self._fail(exc)
            return
        for event in events:
            if isinstance(event, ReleaseRequested):
                with contextlib.suppress(OSError, ProtocolError):
                    send_all(self._sock, self._engine.send(ReleaseRP()), self._acse_timeout)
                self._close()
            elif not isinstance(event, CommandReceived):
                self._close()  # aborted, closed
            else:
                self.abort()  # nothing was asked: a protocol violation

    # --- C-STORE ------------------------------------------------------------------------

    def store(self, fh: BufferedReader, dataset_length: int, sop_class: str, sop_instance: str,
              syntax: str, priority: int = 0,
              originator: tuple[str, int] | None = None) -> CStoreRSP:
        """Send the next `dataset_length` bytes of `fh` as the dataset of a C-STORE-RQ and
        return the response. StoreFailed when the association ends without one (it is
        aborted or closed then); OSError when the file cannot be read (the association is
        aborted: the peer has part of a message). `originator`: a C-MOVE sub-operation's
        Move Originator AE Title and Message ID."""
        if not self._open:
            raise StoreFailed("aborted", "the association is no longer open")
        context = self._contexts[(sop_class, syntax)]
        self._message_id = self._message_id % 0xFFFF + 1
        request = CStoreRQ(self._message_id, sop_class, sop_instance, priority,
                           *(originator or ("", None)))
        try:
            if self._engine.send_limit < MIN_SEND_LIMIT:
                raise StreamError(f"the peer's maximum PDU length "
                                  f"{self._engine.send_limit} leaves no room for data")
            send_all(self._sock, self._engine.send(SendCommand(context, request)),
                      self.peer.dimse_timeout)
            self._engine.send(SendData(context, b"", last=False))  # checks state and context
            stream_dataset(self._sock, fh, dataset_length, context, self._engine.send_limit,
                           self._tx, self.peer.dimse_timeout)
        except StreamError as exc:
            self.abort()
            raise StoreFailed("max_pdu", str(exc)) from exc
        except ProtocolError as exc:
            self._fail(exc)
            raise StoreFailed("protocol", str(exc)) from exc
        except StoreFailed:
            self.abort()
            raise
        except TimeoutError as exc:
            self.abort()
            raise StoreFailed("timeout", f"could not send within "
                              f"{self.peer.dimse_timeout:g} s") from exc
        except (ssl.SSLError, ConnectionError) as exc:
            self.abort()  # reset, broken pipe, a TLS alert: the peer ended it under us
            raise StoreFailed("aborted", f"closed the connection while we sent "
                              f"({describe(exc)})") from exc
        except OSError:
            self.abort()  # the file: the peer holds part of a message that cannot end
            raise
        return self._response(self._message_id, response_wait(self.peer.dimse_timeout,
                                                              dataset_length))

    def _response(self, message_id: int, wait: float) -> CStoreRSP:
        deadline = time.monotonic() + wait
        while True:
            events = self.receive(deadline)
            if events is None:
                self.abort()
                raise StoreFailed("timeout", f"no response within {wait:g} s "
                                  f"(dimse_timeout plus 1 s per MB of the instance)")
            for event in events:
                if isinstance(event, CommandReceived):
                    command = event.command
                    if (isinstance(command, CStoreRSP)
                            and command.message_id_responded == message_id):
                        return command
                    self.abort()
                    raise StoreFailed("protocol", _unexpected(command, message_id))
                if isinstance(event, ReleaseRequested):
                    self.abort()
                    raise StoreFailed("aborted",
                                      "asked to release the association before answering")
                if isinstance(event, Aborted):
                    self._close()
                    raise StoreFailed("aborted", "aborted the association before answering")
                if isinstance(event, ProviderAborted) and event.reason.startswith(
                        PROTOCOL_ERROR):
                    self._close()
                    raise StoreFailed("protocol", f"sent what breaks the protocol instead of "
                                      f"answering ({event.reason})")
                if isinstance(event, ProviderAborted) or self._engine.should_close:
                    self._close()
                    raise StoreFailed("aborted", f"ended the association before answering "
                                      f"({_ended(event)})")

    # --- reading ------------------------------------------------------------------------

    def receive(self, deadline: float) -> list[Event] | None:
        """The events of the next bytes; None when nothing came before the deadline."""
        return receive(self._sock, self._engine, self._rx, deadline)

    def _fail(self, exc: ProtocolError) -> None:
        if isinstance(exc, RemoteProtocolError) and exc.to_send:
            with contextlib.suppress(OSError):
                send_all(self._sock, exc.to_send, 1.0)
        self._close()

    # --- ending -------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE, waiting up to the ACSE timeout for the RP; abort when it does not
        come. Safe to call on a closed association."""
        if not self._open:
            return
        try:
            send_all(self._sock, self._engine.send(ReleaseRQ()), self._acse_timeout)
            deadline = time.monotonic() + self._acse_timeout
            while self._open:
                events = self.receive(deadline)
                if events is None:
                    break
                if any(isinstance(e, ReleaseConfirmed | Aborted | ProviderAborted)
                       for e in events) or self._engine.should_close:
                    self._close()
                    return
                if any(isinstance(e, ReleaseRequested) for e in events):  # both asked at once
                    send_all(self._sock, self._engine.send(ReleaseRP()), self._acse_timeout)
        except (OSError, ProtocolError):
            pass
        self.abort()

    def abort(self) -> None:
        if not self._open:
            return
        with contextlib.suppress(OSError, ProtocolError):
            send_all(self._sock, self._engine.send(AbortPdu()), 1.0)
        self._close()

    def _close(self) -> None:
        self._open = False
        with contextlib.suppress(OSError):
            self._sock.close()


def _unexpected(command: object, message_id: int) -> str:
    """A protocol violation in the peer's answer to C-STORE `message_id`, said plainly."""
    if isinstance(command, CStoreRSP):
        return (f"answered message ID {command.message_id_responded} to C-STORE message ID "
                f"{message_id} (a protocol violation)")
    return f"answered a C-STORE with {type(command).__name__} (a protocol violation)"


def _ended(event: Event) -> str:
    reason = event.reason if isinstance(event, ProviderAborted) else ""
    return reason or "closed the connection"
