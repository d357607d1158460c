"""The broker's part in relayed requests: each message along its route
(router/broker/relay_routes.py), the answer to a request it has no route for, the cancel
of the requests of an acceptor that died, and storage commitments held until their
instances reached the upstream (router/broker/commitment_holds.py)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import zmq

from router.broker.commitment_holds import CommitmentHolds, Held, Released
from router.broker.dispatch import Dispatcher
from router.broker.relay_routes import RelayRoutes, failure
from router.core import metrics
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
from router.core.owned_names import process_alive, writer_of
from router.core.process_identity import ProcessTag

log = logging.getLogger("router.broker.main")  # the name these messages always had

RelayMessage = (RelayResponse | RelayStore | RelayProgress | RelayAck | RelayCancel
                | RelayProbe)


class RelayPaths:
    """Part of the Broker: the reply paths of relayed requests."""

    relays: RelayRoutes
    commitment_holds: CommitmentHolds
    dispatcher: Dispatcher
    frontend: zmq.Socket[bytes]
    backend: zmq.Socket[bytes]
    _send: Callable[..., bool]

    def on_relay(self, sock: zmq.Socket[bytes], identity: bytes, message: Message,
                 payload: list[bytes]) -> None:
        """Pass a relayed request's messages along its route."""
        if isinstance(message, RelayRequest):
            held = self.commitment_holds.hold(message, identity, payload,
                                              self.dispatcher.order.pending, time.monotonic())
            if held is None:  # the worker needs not the UIDs (up to 10,000: ~640 KB)
                if message.hold_instances:
                    message = dataclasses.replace(message, hold_instances=[])
                self._to_worker(identity, message, payload)
            else:
                _log_held(held)
            return
        assert isinstance(message, RelayMessage)
        if message.request_id in self.commitment_holds:
            self._while_held(sock, message)
            return
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

    def _to_worker(self, acceptor: bytes, message: RelayRequest, payload: list[bytes]) -> None:
        worker = self.relays.pick_worker(list(self.dispatcher.workers))
        if worker is None or not self._send(self.backend, worker, message, payload):
            self._send(self.frontend, acceptor, failure(
                message.request_id, message.command, "no router worker available; retry"))
            return
        self.relays.open(message.request_id, acceptor, worker, message.command)
        if message.hold_seconds > 0:  # held or not: the acceptor's wait starts now
            self._send(self.frontend, acceptor, RelayProgress(message.request_id))

    def _while_held(self, sock: zmq.Socket[bytes], message: RelayMessage) -> None:
        """A held request's probe: it is on its way (no answer). Its cancel (the requester
        went away, or the acceptor's request_timeout): it is never relayed."""
        if isinstance(message, RelayCancel) and sock is self.frontend:
            held = self.commitment_holds.take(message.request_id)
            if held is not None:
                _log_dropped(held, "its requester went away")

    def release_commitments(self, now: float) -> None:
        """Each turn: held commitments whose instances all left their destinations, or
        whose bound came, go to a worker."""
        order = self.dispatcher.order
        if not self.commitment_holds.held:  # the usual turn: nothing held, nothing to look at
            order.left.clear()
            return
        left, order.left = order.left, set()
        released: list[Released] = []
        if left:
            released += self.commitment_holds.settled(left, order.pending)
        released += self.commitment_holds.expired(now, order.pending)
        for release in released:
            held = release.held
            _log_released(release, now)
            metrics.COMMITMENT_HOLDS.labels("bound" if release.by_bound else "delivered").inc()
            request = dataclasses.replace(held.request, hold_instances=[])
            self._to_worker(held.acceptor, request, held.payload)

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
        for request_id in list(self.commitment_holds.held):
            acceptor = writer_of(request_id)
            if acceptor is not None and not alive(acceptor):
                held = self.commitment_holds.take(request_id)
                if held is not None:
                    _log_dropped(held, "its acceptor stopped")


def _where(held: Held) -> str:
    return ", ".join(held.destinations)


def _named(held: Held) -> str:
    """The Transaction UID the requester and the PACS log, then the relayed request's id."""
    request = held.request
    return f"{request.transaction_uid or '(no Transaction UID)'} from {request.calling_ae} " \
        f"(N-ACTION {request.request_id})"


def _log_held(held: Held) -> None:
    request = held.request
    log.info("storage commitment %s held: %d of its %d instance(s) still pending for %s "
             "(relayed once they are there, at most in %.0fs: commitment_hold)",
             _named(held), len(held.waiting), len(request.hold_instances), _where(held),
             request.hold_seconds)


def _log_released(release: Released, now: float) -> None:
    held = release.held
    if release.by_bound:
        log.info("storage commitment %s relayed at its bound (%.0fs, commitment_hold) with "
                 "%d instance(s) still pending for %s: the upstream reports them as it finds "
                 "them", _named(held), held.request.hold_seconds, release.pending,
                 _where(held))
    else:
        log.info("storage commitment %s relayed after %.1fs: its instances reached %s",
                 _named(held), now - held.since, _where(held))


def _log_dropped(held: Held, why: str) -> None:
    metrics.COMMITMENT_HOLDS.labels("cancelled").inc()
    log.info("storage commitment %s held for %s: not relayed, %s", _named(held),
             _where(held), why)
