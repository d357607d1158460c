"""The acceptor's association: C-STORE and C-ECHO as pynetdicom serves them, every request to
relay (C-FIND, C-GET, C-MOVE, N-services) handed to the router's RelayServer instead."""

from __future__ import annotations

from typing import Any

from pynetdicom.association import Association

from router.relay_server import COMMANDS, RelayServer


class RouterAssociation(Association):
    router_relay: RelayServer | None = None

    def _serve_request(self, msg: Any, context_id: int) -> None:
        relay = self.router_relay
        if (relay is None or type(msg) not in COMMANDS or self._sent_release
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
