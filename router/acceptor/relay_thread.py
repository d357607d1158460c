"""The relayed requests of one association (queries, retrieves, N-services), served one at a
time, as they arrive, on a thread of their own: the connection's thread keeps reading
meanwhile (C-CANCEL, the C-STORE-RSPs of C-GET sub-operations)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from router.acceptor.requester_link import EngineRequesterLink
from router.dicom.engine import OtherCommand
from router.dicom.engine.dimse import MESSAGE_ID
from router.dicom.relayed_dimse import DimseDecodeError, request_primitive
from router.relay.server import RelayServer

STOP_SECONDS = 5.0  # a relay cancelled upstream ends within its poll (0.1 s)

Request = tuple[int, OtherCommand, bytes | None]  # context ID, command set, dataset


class RelayThread:
    def __init__(self, relay: RelayServer, link: EngineRequesterLink, name: str,
                 refuse: Callable[[str], None]) -> None:
        """`refuse(why)`: a request that does not decode or is not valid ends the
        association (the connection logs, counts and aborts)."""
        self.relay, self.link, self.name, self.refuse = relay, link, name, refuse
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, context_id: int, command: OtherCommand, dataset: bytes | None) -> None:
        self.link.submitted(command.us(MESSAGE_ID) or 0)
        self._queue.put((context_id, command, dataset))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
            self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            context_id, command, dataset = item
            try:
                if not self._serve(context_id, command, dataset):
                    return
            finally:
                self.link.finished(command.us(MESSAGE_ID) or 0)

    def _serve(self, context_id: int, command: OtherCommand, dataset: bytes | None) -> bool:
        """One request, answered; False when it ended the association."""
        try:
            primitive = request_primitive(command, context_id, dataset)
        except DimseDecodeError as exc:
            self.refuse(f"a relayed request {exc}")
            return False
        if not primitive.is_valid_request:
            self.refuse(f"an invalid {type(primitive).__name__} request")
            return False
        self.relay.serve(self.link, primitive, context_id)
        return True

    def stop(self, wait: bool = False) -> None:
        """After the request in progress; `wait=False` (the association is gone): the link
        says so, the relay cancels upstream and the thread ends within STOP_SECONDS."""
        thread = self._thread
        if thread is None:
            return
        if not wait:
            self.link.close()
        self._queue.put(None)
        thread.join(timeout=None if wait else STOP_SECONDS)
        self._thread = None
        self._queue = queue.Queue()
