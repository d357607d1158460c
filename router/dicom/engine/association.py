"""The engine: one association, either role, bytes in -> events out, events in -> bytes out.

    engine = Association.acceptor()          # the transport is open; ARTIM runs
    for event in engine.receive_data(chunk):  # b"" when the peer closed
        ...
    sock.sendall(engine.send(AssociateAC(...)))

No sockets, threads or clocks: when `artim_running`, the caller arms a timer of
`artim_timeout` seconds (again whenever `artim_generation` changes) and calls
`timer_expired(generation)` when it fires. After a RemoteProtocolError the caller writes
its `to_send` and closes (or waits for the peer to close, ARTIM bounding the wait).
"""

from __future__ import annotations

from enum import Enum
from typing import TypedDict, Unpack

from router.dicom.engine import events as ev
from router.dicom.engine.associate import AssociateAC, AssociateRJ, AssociateRQ
from router.dicom.engine.dimse import decode_command, encode_command
from router.dicom.engine.errors import (
    AbortReason,
    AbortSource,
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from router.dicom.engine.framing import PDataStart, PduReader, PduUnit, PdvPiece
from router.dicom.engine.pdus import (
    MCH_COMMAND,
    MCH_LAST,
    Abort,
    Pdu,
    ReleaseRP,
    ReleaseRQ,
    decode_pdu,
    encode_pdata,
    encode_pdu,
)
from router.dicom.engine.states import ACTIONS, TABLE, Action, Evt, State, unexpected

DEFAULT_MAX_PDU = 256 * 1024
DEFAULT_SEND_CAP = 256 * 1024  # what we send when the peer says 0 (no limit), or more
DEFAULT_MAX_ASSOCIATE = 256 * 1024
DEFAULT_MAX_COMMAND = 64 * 1024
DEFAULT_ARTIM = 30.0
MIN_PEER_PDU_LENGTH = 7  # a P-DATA-TF's PDV item header (6 bytes) and one byte of value

_RECEIVED = {AssociateRQ: Evt.RQ_PDU, AssociateAC: Evt.AC_PDU, AssociateRJ: Evt.RJ_PDU,
             ReleaseRQ: Evt.RELEASE_RQ_PDU, ReleaseRP: Evt.RELEASE_RP_PDU, Abort: Evt.ABORT_PDU}
_SENT = {AssociateRQ: Evt.TRANSPORT_CONFIRM, AssociateAC: Evt.ACCEPT_LOCAL,
         AssociateRJ: Evt.REJECT_LOCAL, ev.SendCommand: Evt.PDATA_LOCAL,
         ev.SendData: Evt.PDATA_LOCAL, ReleaseRQ: Evt.RELEASE_RQ_LOCAL,
         ReleaseRP: Evt.RELEASE_RP_LOCAL, Abort: Evt.ABORT_LOCAL}
_STOPS_ARTIM = {State.STA1, State.STA3}
_DATA_STATES = (State.STA6, State.STA7)

SendEvent = AssociateRQ | AssociateAC | AssociateRJ | ReleaseRQ | ReleaseRP | Abort | (
    ev.SendCommand | ev.SendData)


class Options(TypedDict, total=False):
    max_pdu_length: int  # what we accept (and may advertise): P-DATA-TF variable field
    send_pdu_cap: int  # what we send at most, whatever the peer allows
    max_associate_length: int  # A-ASSOCIATE-RQ/AC bodies we accept
    max_command_length: int  # one command set, reassembled from its PDVs
    artim_timeout: float  # seconds, for the caller's timer


class Role(Enum):
    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


class Association:
    def __init__(
        self,
        role: Role,
        *,
        max_pdu_length: int = DEFAULT_MAX_PDU,
        send_pdu_cap: int = DEFAULT_SEND_CAP,
        max_associate_length: int = DEFAULT_MAX_ASSOCIATE,
        max_command_length: int = DEFAULT_MAX_COMMAND,
        artim_timeout: float = DEFAULT_ARTIM,
    ) -> None:
        self.role = role
        self.max_pdu_length = max_pdu_length
        self.send_pdu_cap = send_pdu_cap
        self.max_command_length = max_command_length
        self.artim_timeout = artim_timeout
        self.state = State.STA2 if role is Role.ACCEPTOR else State.STA4
        self.artim_running = role is Role.ACCEPTOR
        self.artim_generation = 1 if self.artim_running else 0
        self.rq: AssociateRQ | None = None
        self.ac: AssociateAC | None = None
        self.accepted: dict[int, str] = {}  # context ID -> transfer syntax
        self.peer_max_pdu = 0
        self._reader = PduReader(max_pdu_length, max_associate_length)
        self._command = bytearray()
        self._command_context: int | None = None
        self._data_context: int | None = None
        self._discarding = False

    @classmethod
    def acceptor(cls, **options: Unpack[Options]) -> Association:
        """The transport was accepted: Sta2, ARTIM running, awaiting the A-ASSOCIATE-RQ."""
        return cls(Role.ACCEPTOR, **options)

    @classmethod
    def requestor(cls, **options: Unpack[Options]) -> Association:
        """The transport is connected: Sta4, the next thing to send is the RQ."""
        return cls(Role.REQUESTOR, **options)

    @property
    def should_close(self) -> bool:
        return self.state is State.STA1

    @property
    def buffered(self) -> int:
        """Bytes held between calls: never more than the limits allow."""
        return self._reader.buffered + len(self._command)

    @property
    def send_limit(self) -> int:
        """Largest P-DATA-TF variable field we send: the peer's maximum, capped."""
        peer = self.peer_max_pdu
        return self.send_pdu_cap if peer == 0 else min(peer, self.send_pdu_cap)

    # --- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ev.Event]:
        """Feed bytes from the transport; b"" means the peer closed it."""
        if self.state is State.STA1:
            raise LocalProtocolError("the association is over: close the transport")
        if not data:
            return self._closed("the peer closed the transport")
        if self._discarding:
            return []
        events: list[ev.Event] = []
        try:
            for unit in self._reader.feed(data):
                if type(unit) is PdvPiece:
                    if self.state in _DATA_STATES:
                        self._on_pdv(unit, events)
                elif type(unit) is PDataStart:
                    if self.state not in _DATA_STATES:  # DT-2/AR-6 keep the state
                        self._on_event(Evt.PDATA_PDU, None, events)
                elif isinstance(unit, PduUnit):
                    pdu = decode_pdu(unit.pdu_type, unit.body)
                    self._on_event(_RECEIVED[type(pdu)], pdu, events)
        except DecodeError as exc:
            error = self._peer_error(Evt.INVALID_PDU, exc.message, exc.reason, exc.limit)
            error.events = events
            raise error from None
        except RemoteProtocolError as exc:
            exc.events = events
            raise
        return events

    def transport_failed(self, reason: str = "transport failure") -> list[ev.Event]:
        """The caller's socket broke (reset, TLS error): A-P-ABORT (Evt17)."""
        if self.state is State.STA1:
            return []
        return self._closed(reason)

    def timer_expired(self, generation: int | None = None) -> list[ev.Event]:
        """ARTIM fired; stale generations (the timer was restarted or stopped) are ignored."""
        if not self.artim_running or generation not in (None, self.artim_generation):
            return []
        if TABLE.get((Evt.ARTIM_EXPIRED, self.state)) is not Action.AA2:
            return []
        self._enter(State.STA1)
        return [ev.TimedOut()]

    def _closed(self, reason: str) -> list[ev.Event]:
        action = TABLE[(Evt.TRANSPORT_CLOSED, self.state)]
        self._enter(State.STA1)
        if action is Action.AA4:
            return [ev.ProviderAborted(reason)]
        return [ev.ConnectionClosed()]

    def _on_event(self, evt: Evt, pdu: Pdu | None, events: list[ev.Event]) -> None:
        action = TABLE.get((evt, self.state))
        if action is None or action in (Action.AA1, Action.AA7, Action.AA8):
            raise self._peer_error(evt, unexpected(evt, self.state), AbortReason.UNEXPECTED_PDU)
        if action is Action.AE3 and isinstance(pdu, AssociateAC):
            proposed = {ctx.context_id for ctx in self.rq.contexts} if self.rq else set()
            self.ac = pdu
            self.accepted = {k: v for k, v in pdu.accepted().items() if k in proposed}
            self.peer_max_pdu = pdu.user_info.max_length
            events.append(ev.AssociationAccepted(pdu))
        elif action is Action.AE4 and isinstance(pdu, AssociateRJ):
            events.append(ev.AssociationRejected(pdu))
        elif action is Action.AE6 and isinstance(pdu, AssociateRQ):
            self._on_associate_rq(pdu, events)
            return
        elif action is Action.AR2 or action is Action.AR8:
            events.append(ev.ReleaseRequested(collision=action is Action.AR8))
        elif action is Action.AR3 or action is Action.AR10:
            events.append(ev.ReleaseConfirmed())
        elif action in (Action.AA2, Action.AA3) and isinstance(pdu, Abort):
            events.append(ev.Aborted(pdu.source, pdu.reason))
        self._transition(action)

    def _on_associate_rq(self, rq: AssociateRQ, events: list[ev.Event]) -> None:
        # AE-6: the DUL itself only checks the protocol version (bit 0: version 1).
        if not rq.protocol_version & 1:
            rj = AssociateRJ(1, 2, 2)  # permanent, ACSE, protocol version not supported
            self._enter(State.STA13, artim=True)
            self._discarding = True
            raise RemoteProtocolError("protocol version not supported", to_send=encode_pdu(rj))
        if 0 < rq.user_info.max_length < MIN_PEER_PDU_LENGTH:
            # Nothing could be sent to it (a PDV needs 6 bytes and a value): refuse it now
            # rather than fail at the first answer.
            rj = AssociateRJ(1, 1, 1)  # permanent, service user, no reason given
            self._enter(State.STA13, artim=True)
            self._discarding = True
            raise RemoteProtocolError(
                f"its maximum PDU length {rq.user_info.max_length} is too small to carry "
                f"any PDV (at least {MIN_PEER_PDU_LENGTH}, or 0)", to_send=encode_pdu(rj))
        self.rq = rq
        self.peer_max_pdu = rq.user_info.max_length
        self._enter(State.STA3)
        events.append(ev.AssociationRequested(rq))

    def _on_pdv(self, piece: PdvPiece, events: list[ev.Event]) -> None:
        context, control, data = piece.context_id, piece.control, piece.data
        if context not in self.accepted:
            raise self._peer_error(Evt.INVALID_PDU, f"PDV on context {context} not accepted",
                                   AbortReason.INVALID_PDU_PARAMETER_VALUE)
        last = piece.ends_pdv and bool(control & MCH_LAST)
        if not control & MCH_COMMAND:
            if self._data_context != context:
                raise self._peer_error(Evt.INVALID_PDU, "data PDV without its command",
                                       AbortReason.UNEXPECTED_PDU_PARAMETER)
            if last:
                self._data_context = None
            if data or last:
                events.append(ev.DataFragment(context, data, last))
            return
        if self._data_context is not None or self._command_context not in (None, context):
            raise self._peer_error(Evt.INVALID_PDU, "command PDV inside another message",
                                   AbortReason.UNEXPECTED_PDU_PARAMETER)
        if len(self._command) + len(data) > self.max_command_length:
            raise self._peer_error(Evt.INVALID_PDU, "command set over the limit",
                                   AbortReason.INVALID_PDU_PARAMETER_VALUE, "command")
        self._command_context = context
        self._command += data
        if last:
            command = decode_command(self._command)
            self._command.clear()
            self._command_context = None
            if command.has_dataset:
                self._data_context = context
            events.append(ev.CommandReceived(context, command))

    def _peer_error(self, evt: Evt, message: str, reason: int,
                    limit: str = "") -> RemoteProtocolError:
        """The A-ABORT the table prescribes: AA-1 (service-user source) in Sta2, AA-8
        (service-provider, with the reason) elsewhere; Sta13 stays (AA-7)."""
        action = TABLE.get((evt, self.state), Action.AA8)
        if action is Action.AA1:
            abort = Abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED)
        else:
            abort = Abort(AbortSource.SERVICE_PROVIDER, reason)
        self._enter(State.STA13, artim=action is not Action.AA7 or not self.artim_running)
        self._discarding = True
        return RemoteProtocolError(message, abort_source=abort.source, abort_reason=abort.reason,
                                   to_send=encode_pdu(abort), cause=reason, limit=limit)

    # --- sending ------------------------------------------------------------------------

    def send(self, event: SendEvent) -> bytes:
        """The bytes to write for a request of the local user; LocalProtocolError when the
        state forbids it (nothing changes then)."""
        evt = _SENT[type(event)]
        action = TABLE.get((evt, self.state))
        if action is None:
            raise LocalProtocolError(f"cannot send {type(event).__name__} in {self.state.name}")
        if isinstance(event, ev.SendCommand | ev.SendData):
            return self._send_pdata(event)
        if action is Action.AA2:  # abort before the RQ went out: just close
            self._enter(State.STA1)
            return b""
        data = encode_pdu(event)
        if isinstance(event, AssociateRQ | AssociateAC):
            self._check_advertised(event)
        if isinstance(event, AssociateRQ):
            self.rq = event
        elif isinstance(event, AssociateAC):
            self.ac, self.accepted = event, event.accepted()
        self._transition(action)
        return data

    def _check_advertised(self, pdu: AssociateRQ | AssociateAC) -> None:
        if isinstance(pdu, AssociateAC) and self.rq is not None:
            proposed = {ctx.context_id for ctx in self.rq.contexts}
            unknown = [ctx.context_id for ctx in pdu.contexts if ctx.context_id not in proposed]
            if unknown:
                raise LocalProtocolError(f"the AC answers contexts never proposed: {unknown}")
        advertised = pdu.user_info.max_length
        if not 0 < advertised <= self.max_pdu_length:
            raise LocalProtocolError(
                f"advertised maximum PDU length {advertised} must be 1..{self.max_pdu_length}"
                " (what this engine enforces)")

    def _send_pdata(self, event: ev.SendCommand | ev.SendData) -> bytes:
        if event.context_id not in self.accepted:
            raise LocalProtocolError(f"presentation context {event.context_id} not accepted")
        limit = self.send_limit
        if limit < MIN_PEER_PDU_LENGTH:
            raise LocalProtocolError(f"peer maximum PDU length {limit} is too small")
        if isinstance(event, ev.SendCommand):
            command = encode_command(event.command)
            return encode_pdata(event.context_id, command, MCH_COMMAND | MCH_LAST, limit)
        if not event.data and not event.last:
            return b""
        return encode_pdata(event.context_id, event.data, MCH_LAST if event.last else 0, limit)

    # --- transitions --------------------------------------------------------------------

    def _transition(self, action: Action) -> None:
        if action is Action.AR8:
            self._enter(State.STA9 if self.role is Role.REQUESTOR else State.STA10)
            return
        target = _NEXT[action]
        self._enter(target, artim=action in _STARTS_ARTIM)

    def _enter(self, state: State, *, artim: bool = False) -> None:
        self.state = state
        if artim:
            self.artim_running = True
            self.artim_generation += 1
        elif state in _STOPS_ARTIM or state is State.STA1:
            self.artim_running = False


_STARTS_ARTIM = {Action.AE8, Action.AR4, Action.AA1, Action.AA8}
_NEXT = {action: state for action, state in ACTIONS.items() if state is not None}
