"""The acceptor's association: C-STORE and C-ECHO as pynetdicom serves them, every request to
relay (C-FIND, C-GET, C-MOVE, N-services) handed to the router's RelayServer instead; and
the router's own per-association state, as typed fields (`router_association(assoc)`
gives it to the acceptor's handlers, whichever thread pynetdicom runs them on)."""

from __future__ import annotations

from typing import Any, Protocol

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import (
    C_FIND,
    C_GET,
    C_MOVE,
    N_ACTION,
    N_CREATE,
    N_DELETE,
    N_EVENT_REPORT,
    N_GET,
    N_SET,
)

# The requests the acceptor relays (router/relay/), by primitive type.
RELAYED_COMMANDS: dict[type, str] = {
    C_FIND: "C-FIND", C_GET: "C-GET", C_MOVE: "C-MOVE", N_GET: "N-GET", N_SET: "N-SET",
    N_ACTION: "N-ACTION", N_CREATE: "N-CREATE", N_DELETE: "N-DELETE",
    N_EVENT_REPORT: "N-EVENT-REPORT",
}


class RequestRelay(Protocol):
    """What serves a relayed request (router/relay/server.py's RelayServer)."""

    def serve(self, assoc: Any, msg: Any, context_id: int) -> None: ...


class RouterAssociation(Association):
    router_relay: RequestRelay | None = None
    # The acceptor's AssociationSession (router/acceptor/session.py), set on EVT_REQUESTED.
    router_session: Any = None

    # The read guard (router/dicom/message_guard.py) reports into the session.
    @property
    def router_progress(self) -> Any:
        return None if self.router_session is None else self.router_session.progress

    @property
    def router_dataset_truncated(self) -> bool:
        return self.router_session is not None and bool(self.router_session.dataset_truncated)

    @router_dataset_truncated.setter
    def router_dataset_truncated(self, value: bool) -> None:
        if self.router_session is not None:
            self.router_session.dataset_truncated = value

    @property
    def router_disk_full(self) -> bool:
        return self.router_session is not None and bool(self.router_session.disk_full)

    @router_disk_full.setter
    def router_disk_full(self, value: bool) -> None:
        if self.router_session is not None:
            self.router_session.disk_full = value

    def _serve_request(self, msg: Any, context_id: int) -> None:
        relay = self.router_relay
        if (relay is None or type(msg) not in RELAYED_COMMANDS or self._sent_release
                or not msg.is_valid_request or context_id not in self._accepted_cx):
            super()._serve_request(msg, context_id)  # also refuses what is not valid
            return
        # As pynetdicom does around its own service classes: cancels are per request, and a
        # paused reactor lets this thread use the association (C-GET sub-operations).
        self.dimse.cancel_req = {}
        self._is_paused = True
        try:
            relay.serve(self, msg, context_id)
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}


def router_association(assoc: Any) -> RouterAssociation:
    """The acceptor's association of an event (every one the acceptor serves is one)."""
    if not isinstance(assoc, RouterAssociation):
        raise TypeError(f"not an association of the router's acceptor: {type(assoc).__name__}")
    return assoc
