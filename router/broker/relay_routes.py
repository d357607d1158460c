"""The broker's reply paths for relayed requests (queries, retrieves, N-services).

Unlike a job, a relayed request is not durable: it lives as long as the requester's
association waits for it. The broker only picks a worker for it and remembers, per request
id, which acceptor socket asked and which worker answers, so that answers, C-CANCELs and
acknowledgements find their way. A worker that goes away fails its requests at once (the
requester gets a failure status, not a hang).
"""

from __future__ import annotations

from dataclasses import dataclass

from router.core.dimse_status import Status
from router.core.messages import RelayResponse


@dataclass
class Route:
    acceptor: bytes  # the acceptor socket's identity on the frontend
    worker: bytes  # the worker's identity on the backend


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

    def open(self, request_id: str, acceptor: bytes, worker: bytes) -> None:
        self.routes[request_id] = Route(acceptor, worker)

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
            answers.append((route.acceptor, RelayResponse(
                rid, Status.OUT_OF_RESOURCES, final=True,
                error_comment="router worker stopped; retry")))
        return answers
