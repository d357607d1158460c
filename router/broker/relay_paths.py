"""The broker's part in relayed requests: each message along its route
(router/broker/relay_routes.py), the answer to a request it has no route for, and the
cancel of the requests of an acceptor that died."""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from router.broker.dispatch import Dispatcher
from router.broker.relay_routes import RelayRoutes, failure
from router.core.messages import (
    Message,
    RelayAck,
    RelayCancel,
    RelayProbe,
    RelayProgress,
    RelayRequest,
    RelayResponse,
    RelayStore,
)
from router.core.owned_names import process_alive
from router.core.process_identity import ProcessTag

log = logging.getLogger("router.broker.main")  # the name these messages always had

RelayMessage = (RelayResponse | RelayStore | RelayProgress | RelayAck | RelayCancel
                | RelayProbe)


class RelayPaths:
    """Part of the Broker: the reply paths of relayed requests."""

    relays: RelayRoutes
    dispatcher: Dispatcher
    frontend: zmq.Socket[bytes]
    backend: zmq.Socket[bytes]
    _send: Callable[..., bool]

    def on_relay(self, sock: zmq.Socket[bytes], identity: bytes, message: Message,
                 payload: list[bytes]) -> None:
        """Pass a relayed request's messages along its route."""
        if isinstance(message, RelayRequest):
            worker = self.relays.pick_worker(list(self.dispatcher.workers))
            if worker is None or not self._send(self.backend, worker, message, payload):
                self._send(self.frontend, identity, failure(
                    message.request_id, message.command, "no router worker available; retry"))
                return
            self.relays.open(message.request_id, identity, worker, message.command)
            return
        assert isinstance(message, RelayMessage)
        route = self.relays.get(message.request_id)
        if route is None or (sock is self.backend and identity != route.worker):
            # (Another identity: a worker that reconnected; its old one is failed with
            # its requests when the broker finds it gone, so this one must not answer.)
            self._unrouted(sock, identity, message)
            return
        if isinstance(message, RelayProbe):
            return  # on its way: the worker answers, or fails it if it goes away
        if sock is self.frontend:
            self._send(self.backend, route.worker, message, payload)
        else:
            self._send(self.frontend, route.acceptor, message, payload)
            if isinstance(message, RelayResponse) and message.final:
                self.relays.close(message.request_id)

    def _unrouted(self, sock: zmq.Socket[bytes], identity: bytes, message: RelayMessage,
                  ) -> None:
        """A relayed request's message with no route: it ended already (a late ack or
        cancel: nothing to do), or it went out through a broker that has died since, whose
        routes died with it. Then the acceptor that probes gets its final failure at once
        instead of at request_timeout, and the worker still serving it is told to stop (a
        C-GET's worker would otherwise wait for acknowledgements forever)."""
        if isinstance(message, RelayProbe):
            answer = failure(message.request_id, message.command,
                             "router broker restarted; retry")
            log.warning("relayed request %s is unknown here (the broker restarted while it "
                        "was in progress); its requester gets 0x%04X", message.request_id,
                        answer.status)
            self._send(self.frontend, identity, answer)
        elif sock is self.backend and not (isinstance(message, RelayResponse)
                                           and message.final):
            self._send(self.backend, identity, RelayCancel(message.request_id))

    def cancel_for_dead_acceptors(
            self, alive: Callable[[ProcessTag], bool] = process_alive) -> None:
        """Once a second: the requests of an acceptor that died are cancelled at their
        workers (the upstream gets C-CANCEL, a C-GET stops waiting for acknowledgements)."""
        for worker, request_id in self.relays.acceptors_gone(alive):
            log.warning("relayed request %s: its acceptor stopped; cancelling it upstream",
                        request_id)
            self._send(self.backend, worker, RelayCancel(request_id))
