"""A relayed request's view of the requester's association, on the engine (the relay's
`RequesterLink`, router/relay/exchange.py).

Relayed requests and their responses travel as pynetdicom primitives between the connection
and the relay (router/dicom/relayed_dimse.py translates); C-STOREs never come this way.

The relay runs on its own thread while the connection's thread keeps reading (C-CANCEL,
the C-STORE-RSPs of C-GET sub-operations): `send_lock` orders their writes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.core.rules import AssociationFacts
from router.dicom.dataset_file import read_dataset_file
from router.dicom.engine import (
    Association,
    CStoreRQ,
    CStoreRSP,
    ProtocolError,
    SendCommand,
    SendData,
)
from router.dicom.relayed_dimse import response_bytes
from router.dicom.store_client import response_wait
from router.relay.exchange import RequesterGone
from router.relay.request_ids import RequestIds

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # read from the file and handed to the engine, which cuts it to PDUs

class EngineRequesterLink:
    def __init__(self, engine: Association, facts: AssociationFacts,
                 abstract_syntaxes: dict[int, str], scp_roles: frozenset[str],
                 write: Callable[[bytes], None], send_lock: threading.Lock,
                 response_timeout: float) -> None:
        self.engine = engine
        self.facts = facts
        self.abstract_syntaxes = abstract_syntaxes  # accepted context ID -> abstract syntax
        self.scp_roles = scp_roles  # SOP classes the requester takes C-STOREs for (SCP role)
        self._write = write
        self._send_lock = send_lock
        self.response_timeout = response_timeout
        self.open = True
        self._requests = RequestIds()
        self._store_answers: queue.Queue[CStoreRSP | None] = queue.Queue()

    # --- from the connection's thread ---------------------------------------------------

    def submitted(self, message_id: int) -> None:
        """A relayed request arrived: a C-CANCEL may name it from now on."""
        self._requests.submitted(message_id)

    def cancel(self, message_id: int) -> None:
        self._requests.cancel(message_id)

    def finished(self, message_id: int) -> None:
        """A relayed request ended: its cancel is forgotten, a later one may reuse its ID."""
        self._requests.finished(message_id)

    def idle_since(self) -> float | None:
        """When no relayed request was last outstanding; None while one is (RequestIds)."""
        return self._requests.idle_since()

    def store_answered(self, response: CStoreRSP) -> None:
        self._store_answers.put(response)

    def close(self) -> None:
        self.open = False
        self._store_answers.put(None)  # a C-GET sub-operation waiting for its answer ends

    # --- RequesterLink (the relay's thread) -----------------------------------------------

    def accepted_syntax(self, context_id: int) -> str:
        return self.engine.accepted[context_id]


    def cancelled(self, message_id: int) -> bool:
        return self._requests.cancelled(message_id) or not self.open

    def gone(self) -> bool:
        return not self.open

    def send(self, primitive: Any, context_id: int) -> None:
        command, dataset = response_bytes(primitive)
        with self._send_lock:
            if not self.open:
                raise RequesterGone("its association ended")
            try:
                data = self.engine.send(SendCommand(context_id, command))
                if dataset:
                    data += self.engine.send(SendData(context_id, dataset, last=True))
                self._write(data)
            except (ProtocolError, OSError) as exc:  # aborted or closed meanwhile
                raise RequesterGone(str(exc)) from None

    def storage_contexts(self) -> list[list[Any]]:
        out: dict[str, list[str]] = {}
        for context_id, syntax in self.engine.accepted.items():
            sop = self.abstract_syntaxes.get(context_id, "")
            if sop in self.scp_roles and syntax not in out.setdefault(sop, []):
                out[sop].append(syntax)
        return [[sop, syntaxes] for sop, syntaxes in out.items()]

    def store(self, path: Path, message_id: int) -> int | None:
        """The file's dataset as a C-STORE on the context for its SOP class and transfer
        syntax where the requester is the SCP; the status it answers."""
        with path.open("rb") as fh:
            meta = read_dataset_file(fh, path.stat().st_size)
            context = self._store_context(meta.sop_class_uid, meta.transfer_syntax_uid)
            if context is None:
                log.warning("C-GET sub-operation: the requester accepted no context for %s in "
                            "%s (SCP role)", meta.sop_class_uid, meta.transfer_syntax_uid)
                return None
            request = CStoreRQ(message_id, meta.sop_class_uid, meta.sop_instance_uid)
            with self._send_lock:
                self._write(self.engine.send(SendCommand(context, request)))
                remaining = meta.dataset_length
                while True:
                    chunk = fh.read(min(CHUNK, remaining))
                    remaining -= len(chunk)
                    last = remaining <= 0 or not chunk
                    if last and len(chunk) % 2:
                        chunk += b"\0"  # PS3.5 A.5: an odd (deflated) stream is padded
                    self._write(self.engine.send(SendData(context, chunk, last=last)))
                    if last:
                        break
        # A viewer may store a large instance before it answers, as a PACS does
        # (store_client.response_wait): listen.dimse_timeout plus one second per MB.
        wait = response_wait(self.response_timeout, meta.dataset_length)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                answer = self._store_answers.get(timeout=left)
            except queue.Empty:
                break
            if answer is None:  # the association ended
                return None
            if answer.message_id_responded == message_id:
                return answer.status
            # a late answer to an earlier sub-operation that timed out: not this one's
        log.warning("C-GET sub-operation: no C-STORE-RSP within %g s (listen.dimse_timeout "
                    "plus 1 s per MB of the instance)", wait)
        return None

    def _store_context(self, sop_class: str, syntax: str) -> int | None:
        if sop_class not in self.scp_roles:
            return None
        for context_id, accepted in self.engine.accepted.items():
            if self.abstract_syntaxes.get(context_id) == sop_class and accepted == syntax:
                return context_id
        return None
