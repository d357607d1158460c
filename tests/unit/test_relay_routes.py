"""The broker's reply paths of relayed requests: the failure each command gets when its
worker or broker goes away, and the cancel of the requests of an acceptor that died."""

from __future__ import annotations

from typing import Any

import pytest

from router.broker.commitment_holds import CommitmentHolds
from router.broker.dispatch import Dispatcher
from router.broker.relay_paths import RelayPaths
from router.broker.relay_routes import RelayRoutes
from router.core.messages import Message, RelayCancel, RelayProbe, RelayResponse

DEAD, ALIVE = 4_000_001, 4_000_002


@pytest.mark.parametrize(("command", "status"), [
    ("C-FIND", 0xA700), ("C-GET", 0xA701), ("C-MOVE", 0xA701), ("N-ACTION", 0x0110)])
def test_a_gone_worker_fails_each_request_with_its_commands_status(command: str,
                                                                   status: int) -> None:
    routes = RelayRoutes()
    routes.open(f"{ALIVE}-abc", b"acceptor", b"worker", command)
    [(acceptor, answer)] = routes.worker_gone(b"worker")
    assert acceptor == b"acceptor" and answer.final and answer.status == status
    assert routes.get(f"{ALIVE}-abc") is None


def test_the_requests_of_a_dead_acceptor_are_closed_for_cancelling() -> None:
    routes = RelayRoutes()
    routes.open(f"{DEAD}-one", b"a1", b"w1", "C-GET")
    routes.open(f"{ALIVE}-two", b"a2", b"w1", "C-FIND")
    routes.open("not-a-pid", b"a3", b"w2", "C-FIND")  # a name we did not make: left alone
    assert routes.acceptors_gone(lambda writer: writer.pid != DEAD) == [(b"w1", f"{DEAD}-one")]
    assert routes.get(f"{DEAD}-one") is None
    assert routes.get(f"{ALIVE}-two") and routes.get("not-a-pid")


class Paths(RelayPaths):
    """RelayPaths with its sockets replaced by a list of what it sent (and a real Dispatcher,
    when given: tests/unit/test_commitment_holds.py)."""

    def __init__(self, dispatcher: Dispatcher | None = None) -> None:
        if dispatcher is not None:
            self.dispatcher = dispatcher
        self.relays = RelayRoutes()
        self.commitment_holds = CommitmentHolds()
        self.frontend: Any = "frontend"
        self.backend: Any = "backend"
        self.sent: list[tuple[str, bytes, Message]] = []

    def _send(self, sock: Any, identity: bytes, message: Message,  # type: ignore[override]
              payload: list[bytes] | None = None) -> bool:
        self.sent.append((sock, identity, message))
        return True


def test_the_worker_is_told_to_cancel_when_the_acceptor_is_gone() -> None:
    paths = Paths()
    paths.relays.open(f"{DEAD}-one", b"a1", b"w1", "C-GET")
    paths.cancel_for_dead_acceptors(lambda writer: writer.pid != DEAD)
    assert paths.sent == [("backend", b"w1", RelayCancel(f"{DEAD}-one"))]
    paths.cancel_for_dead_acceptors(lambda writer: writer.pid != DEAD)
    assert len(paths.sent) == 1  # once


@pytest.mark.parametrize(("command", "status"), [("C-FIND", 0xA700), ("C-MOVE", 0xA701),
                                                 ("", 0x0110)])
def test_a_probe_for_a_request_unknown_here_gets_its_commands_failure(command: str,
                                                                      status: int) -> None:
    paths = Paths()
    paths.on_relay("frontend", b"a1", RelayProbe(f"{ALIVE}-x", command), [])  # type: ignore[arg-type]
    [(sock, identity, answer)] = paths.sent
    assert (sock, identity) == ("frontend", b"a1")
    assert isinstance(answer, RelayResponse) and answer.final and answer.status == status
