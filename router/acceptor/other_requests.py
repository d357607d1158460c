"""What an association carries besides C-STORE and C-ECHO: C-CANCEL, relayed requests
(queries, retrieves, N-services: handed to the association's relay thread, with their
dataset once it is whole) and requests the router does not serve on that context (answered
with a refusal once their dataset is in, unserved.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from router.acceptor.connection_settings import ConnectionSettings
from router.acceptor.relay_thread import RelayThread
from router.acceptor.requester_link import EngineRequesterLink
from router.acceptor.session import AssociationSession
from router.acceptor.unserved import C_CANCEL_RQ, UNRECOGNIZED_OPERATION, unrecognized_operation
from router.core import metrics
from router.dicom.engine import Association, DataFragment, OtherCommand, SendCommand
from router.dicom.engine.dimse import MESSAGE_ID_RESPONDED_TO as RESPONDED_TO
from router.dicom.relayed_dimse import REQUEST_MESSAGES

log = logging.getLogger(__name__)


class OtherRequests:
    """One association's requests other than C-STORE and C-ECHO, on its connection thread."""

    def __init__(self, settings: ConnectionSettings, address: str, link: EngineRequesterLink,
                 relays: RelayThread | None, session: AssociationSession,
                 send: Callable[[bytes], None], abort: Callable[[], None],
                 dropped: Callable[[str, str], Exception]) -> None:
        self.settings = settings
        self.address = address
        self._link = link
        self._relays = relays
        self.session = session
        self._send = send
        self.abort = abort
        self._dropped = dropped  # logs and counts; returns the exception that ends it all
        self._other: tuple[int, OtherCommand] | None = None
        self._relayed: tuple[int, OtherCommand, bytearray] | None = None

    def command(self, engine: Association, context_id: int, command: OtherCommand) -> None:
        field = command.command_field
        if field == C_CANCEL_RQ:
            self._link.cancel(command.us(RESPONDED_TO) or 0)
            return
        relayed = (self._relays is not None and field in REQUEST_MESSAGES
                   and self.settings.offer.serves_relayed(
                       self._link.abstract_syntaxes.get(context_id, "")))
        if relayed and command.has_dataset:
            self._relayed = (context_id, command, bytearray())  # relayed once it is whole
        elif relayed:
            assert self._relays is not None
            self._relays.submit(context_id, command, None)
        elif command.has_dataset:
            self._other = (context_id, command)  # answered once its dataset is in
        else:
            self._refuse(engine, context_id, command)

    def data(self, engine: Association, event: DataFragment) -> None:
        """A fragment of a relayed request's dataset, or of one the router does not serve."""
        progress = self.session.progress
        if self._relayed is not None:
            context_id, command, dataset = self._relayed
            dataset += event.data
            if len(dataset) > self.settings.max_message_bytes:
                self.abort()
                raise self._dropped("message_too_large", "a relayed request's dataset longer "
                                    f"than listen.max_message_bytes "
                                    f"({self.settings.max_message_bytes})")
            if event.last:
                self._relayed = None
                if progress is not None:
                    progress.message_done()
                assert self._relays is not None
                self._relays.submit(context_id, command, bytes(dataset))
        elif self._other is not None and event.last:
            context_id, command = self._other
            self._other = None
            if progress is not None:
                progress.message_done()
            self._refuse(engine, context_id, command)

    def _refuse(self, engine: Association, context_id: int, command: OtherCommand) -> None:
        """A request the router does not serve on this context (unserved.py)."""
        response = unrecognized_operation(command)
        if response is None:
            return
        log.warning("refusing DIMSE command 0x%04X from %s: not a service this association "
                    "negotiated", command.command_field, self.address)
        metrics.DIMSE_REQUESTS.labels("other", f"0x{UNRECOGNIZED_OPERATION:04X}").inc()
        self._send(engine.send(SendCommand(context_id, response)))
