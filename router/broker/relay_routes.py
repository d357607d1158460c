"""The broker's reply paths for relayed requests (queries, retrieves, N-services).

Unlike a job, a relayed request is not durable: it lives as long as the requester's
association waits for it. The broker only picks a worker for it and remembers, per request
id, which acceptor socket asked and which worker answers, so that answers, C-CANCELs and
acknowledgements find their way. A worker that goes away fails its requests at once (the
requester gets a failure status, not a hang). An acceptor that goes away (kill -9, the OOM
killer: it could not cancel) has its requests cancelled at their workers: the request id
starts with the acceptor's pid and start time (router/core/owned_names.py), which the broker
checks once a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from router.core.dimse_status import relay_failure_status
from router.core.messages import RelayResponse
from router.core.owned_names import writer_of
from router.core.process_identity import ProcessTag


@dataclass
class Route:
    acceptor: bytes  # the acceptor socket's identity on the frontend
    worker: bytes  # the worker's identity on the backend
    command: str = ""  # C-FIND, C-GET...: the failure status its requester may get


def failure(request_id: str, command: str, comment: str) -> RelayResponse:
    """A final failure for a relayed request: 0xA700 for C-FIND, 0xA701 for C-GET and
    C-MOVE (PS3.4 C.4.2, C.4.3), 0x0110 for N-services. Unanswered: the worker carrying it
    is gone (or unknown), and the upstream may have taken it all the same (a storage
    commitment then stays pending, router/relay/server.py)."""
    return RelayResponse(request_id, relay_failure_status(command), final=True,
                         error_comment=comment, unanswered=True)


class RelayRoutes:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._turn = 0

    def pick_worker(self, workers: list[bytes]) -> bytes | None:
        """Round robin: requests are few and long next to deliveries; credits are not used."""
        if not workers:
            return None
        self._turn = (self._turn + 1) % len(workers)
        return workers[self._turn]

    def open(self, request_id: str, acceptor: bytes, worker: bytes, command: str = "") -> None:
        self.routes[request_id] = Route(acceptor, worker, command)

    def get(self, request_id: str) -> Route | None:
        return self.routes.get(request_id)

    def close(self, request_id: str) -> None:
        self.routes.pop(request_id, None)

    def worker_gone(self, worker: bytes) -> list[tuple[bytes, RelayResponse]]:
        """Failure answers for every request that worker held, to send to their acceptors."""
        lost = [rid for rid, route in self.routes.items() if route.worker == worker]
        answers = []
        for rid in lost:
            route = self.routes.pop(rid)
            answers.append((route.acceptor, failure(rid, route.command,
                                                    "router worker stopped; retry")))
        return answers

    def acceptors_gone(self, alive: Callable[[ProcessTag], bool]) -> list[tuple[bytes, str]]:
        """(worker, request id) of every request whose acceptor process is gone; their
        routes are closed: the worker is to cancel them."""
        lost = []
        for rid, route in list(self.routes.items()):
            acceptor = writer_of(rid)
            if acceptor is not None and not alive(acceptor):
                del self.routes[rid]
                lost.append((route.worker, rid))
        return lost
