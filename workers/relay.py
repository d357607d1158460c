"""Relayed requests in a worker: one query, retrieve or N-request sent to its upstream, every
answer streamed back to the acceptor as it arrives (README "Query, retrieve and N-services").

Each request runs on a relay thread of its own association to the upstream; answers go out
through the thread's own socket to the worker's main thread, which passes them to the
broker. A C-CANCEL from the requester reaches the running task (`RelayTask.cancel`) and is
sent upstream at once. C-GET sub-operations arrive as files (chunked receive, on the spool
filesystem), move into the spool's relay folder and travel as file names, at most
RELAY_WINDOW ahead of what the acceptor has passed on: a slow requester slows the upstream
instead of filling a disk or a socket.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import zmq
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import build_context

from router.core import metrics
from router.core.client_tls import CLIENT_CONTEXTS
from router.core.config import DicomDestination, KnownAE, RouterConfig
from router.core.dimse_status import (
    PENDING_STATUSES,
    Status,
    is_delivered,
    relay_failure_status,
)
from router.core.errors import TLSConfigError
from router.core.log_context import working_on
from router.core.messages import RelayProgress, RelayRequest, RelayResponse, RelayStore
from router.core.messages import encode as encode_message
from router.core.owned_names import relayed_get_name
from router.core.spool import Spool
from router.dicom.net import tune_scu_socket
from router.dicom.scu_outcome import failure_from_association, mark_connected
from router.dicom.shallow_dataset import Unreadable, shallow_dataset
from router.dicom.silence_wait import SilenceWait
from router.relay.move_registry import ArrivalWatch
from workers.relay_affinity import UpstreamAffinity
from workers.relay_answers import no_answer, status_fields
from workers.relay_tasks import RELAY_WINDOW, ActiveRelays, RelayTask

__all__ = ["RELAY_WINDOW", "ActiveRelays", "RelayTask", "RelayThread"]

log = logging.getLogger(__name__)

PENDING = PENDING_STATUSES


class UpstreamUnavailable(Exception):
    """This upstream could not be associated with; the next one in the list is tried."""


@dataclass(frozen=True)
class Upstream:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae: str
    config: DicomDestination | KnownAE
    table: str  # the config table it comes from: "destinations" or "known_aes"


def resolve_upstream(config: RouterConfig, name: str, known_ae: bool) -> Upstream:
    if known_ae:
        peer = config.known_aes[name]
        return Upstream(name, name, peer.host, peer.port, config.ae_title, peer, "known_aes")
    dest = config.destinations[name]
    assert isinstance(dest, DicomDestination), "config validation allows only DICOM upstreams"
    return Upstream(name, dest.ae_title, dest.host, dest.port,
                    dest.calling_ae or config.ae_title, dest, "destinations")


class RelayThread(threading.Thread):
    def __init__(self, config: RouterConfig, spool: Spool, tasks: queue.Queue[RelayTask | None],
                 context: zmq.Context[zmq.Socket[bytes]], endpoint: str, active: ActiveRelays,
                 index: int) -> None:
        super().__init__(name=f"relay-{index}", daemon=True)
        self.config = config
        self.spool = spool
        self.tasks = tasks
        self.active = active
        self.affinity = UpstreamAffinity(config.spool.state_folder("n-instances"))
        self.out = context.socket(zmq.PUSH)  # this thread's own socket
        self.out.setsockopt(zmq.LINGER, 1000)
        self.out.connect(endpoint)

    def run(self) -> None:
        try:
            while (task := self.tasks.get()) is not None:
                with working_on(job=task.request.request_id):
                    self.active.add(task)
                    try:
                        self.handle(task)
                    except Exception as exc:  # never leave a requester waiting
                        log.exception("relayed %s failed unexpectedly", task.request.command)
                        self._final(task, relay_failure_status(task.request.command),
                                    f"router error: {exc}"[:64])
                    finally:
                        self.active.remove(task)
        finally:
            self.out.close()

    # --- sending answers --------------------------------------------------------------------

    def _send(self, message: RelayResponse | RelayStore | RelayProgress,
              payload: bytes | None = None) -> None:
        self.out.send_multipart([encode_message(message), *([payload] if payload else [])])

    def _final(self, task: RelayTask, status: int, comment: str, upstream: str = "",
               unanswered: bool = False) -> None:
        status, comment = _stopped(task, status, comment)
        self._send(RelayResponse(task.request.request_id, status, final=True, upstream=upstream,
                                 error_comment=comment, unanswered=unanswered))

    def _answer(self, task: RelayTask, upstream: str, status_ds: Dataset | None,
                dataset: Dataset | None, final: bool | None = None) -> bool:
        """Relay one answer; True when it was the last. No status: the upstream went silent."""
        request = task.request
        if status_ds is None or "Status" not in status_ds:
            if task.cancelled.is_set():  # aborted after its C-CANCEL: cancelled all the same
                self._final(task, Status.CANCEL, f"cancelled; {upstream} aborted", upstream)
            else:
                self._final(task, relay_failure_status(request.command),
                            no_answer(task, upstream), upstream, unanswered=True)
            return True
        status = int(status_ds.Status)
        last = status not in PENDING if final is None else final
        comment = str(status_ds.get("ErrorComment", ""))[:64]
        if last:
            status, comment = _stopped(task, status, comment)
        payload = self._encode(request, dataset)
        counts: dict[str, Any] = {name: int(status_ds.get(keyword, -1)) for name, keyword in (
            ("remaining", "NumberOfRemainingSuboperations"),
            ("completed", "NumberOfCompletedSuboperations"),
            ("failed", "NumberOfFailedSuboperations"),
            ("warning", "NumberOfWarningSuboperations"))}
        # pynetdicom's status dataset lacks the N-CREATE response's Affected SOP Instance UID
        # (the one the upstream assigned when the request had none): the command set has it.
        affected = task.response if task.response is not None else status_ds
        self._send(RelayResponse(
            request.request_id, status, final=last, upstream=upstream,
            error_comment=comment,
            sop_class_uid=str(affected.get("AffectedSOPClassUID", "")),
            sop_instance_uid=str(affected.get("AffectedSOPInstanceUID", "")),
            has_dataset=payload is not None, status_fields=status_fields(status_ds),
            **counts), payload)
        if last:
            metrics.DIMSE_RESPONSES.labels(upstream, request.command, f"0x{status:04X}").inc()
            if request.command == "N-CREATE" and is_delivered(status):
                # Its N-SET and the rest go to this upstream first (workers/relay_affinity.py)
                self.affinity.remember(str(affected.get("AffectedSOPInstanceUID", "")) or
                                       request.sop_instance_uid, upstream)
        return last

    @staticmethod
    def _encode(request: RelayRequest, dataset: Dataset | None) -> bytes | None:
        if dataset is None or not isinstance(dataset, Dataset) or len(dataset) == 0:
            return None
        implicit = request.transfer_syntax_uid == ImplicitVRLittleEndian
        return bytes(encode(dataset, implicit, True) or b"")

    # --- one request ------------------------------------------------------------------------

    def handle(self, task: RelayTask) -> None:
        request = task.request
        if task.cancelled.is_set():  # cancelled while it waited for this thread
            self._final(task, Status.CANCEL, "cancelled before it reached an upstream")
            return
        problems = []
        for name in self.affinity.order(request.command, request.sop_instance_uid,
                                        request.upstreams):
            try:
                upstream = resolve_upstream(self.config, name, request.to_known_ae)
                assoc = self._associate(upstream, task)
            except (UpstreamUnavailable, KeyError) as exc:
                problems.append(f"{name}: {exc}")
                continue
            try:
                task.assoc = assoc
                if task.cancelled.is_set():
                    self._final(task, Status.CANCEL, "cancelled", name)
                    return
                self._run(task, assoc, name)
            finally:
                task.assoc = None
                if assoc.is_established:
                    assoc.release()
            return
        detail = "; ".join(problems)
        log.warning("relayed %s: no upstream answered: %s", request.command, detail)
        # Whole: the acceptor's log and a kept commitment result say why; the DICOM
        # ErrorComment is cut to its 64 characters where it is written (exchange.py).
        self._final(task, relay_failure_status(request.command),
                    f"no upstream available: {detail}")

    def _associate(self, upstream: Upstream, task: RelayTask) -> Association:
        request = task.request
        ae = AE(ae_title=upstream.calling_ae)
        cfg = upstream.config
        timeouts = cfg if isinstance(cfg, DicomDestination) else None
        ae.connection_timeout = timeouts.connect_timeout if timeouts else 10
        ae.acse_timeout = timeouts.acse_timeout if timeouts else 30
        ae.dimse_timeout = timeouts.dimse_timeout if timeouts else 60
        ae.network_timeout = ae.dimse_timeout
        ae.maximum_pdu_size = timeouts.max_pdu if timeouts else 262_144
        syntaxes = [request.transfer_syntax_uid] + [
            ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
            if ts != request.transfer_syntax_uid]
        contexts = [build_context(request.sop_class_uid, syntaxes)]
        roles: list[Any] = []
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, tune_scu_socket)]
        if request.command == "C-GET":
            for sop_class, transfer_syntaxes in request.storage_contexts[:127]:
                contexts.append(build_context(sop_class, transfer_syntaxes))
                roles.append(build_role(sop_class, scp_role=True))
            handlers.append((evt.EVT_C_STORE, self._on_sub_store, [task]))
        if request.command == "N-EVENT-REPORT":
            roles.append(build_role(request.sop_class_uid, scp_role=True))
        if request.command.startswith("N-"):
            handlers.append((evt.EVT_DIMSE_RECV, _keep_response, [task]))
        else:
            handlers.append((evt.EVT_PDU_SENT, _request_went, [task]))
        tls_args = None
        if cfg.tls.mode != "off":
            server_name = getattr(cfg.tls, "server_name", None) or upstream.host
            where = f"{upstream.table}.{upstream.name}.tls"
            try:
                tls_args = (CLIENT_CONTEXTS.get(cfg.tls, where), server_name)
            except TLSConfigError:  # logged once by CLIENT_CONTEXTS, with the files
                raise UpstreamUnavailable(f"bad TLS material {where}") from None
        handlers.append((evt.EVT_CONN_OPEN, mark_connected))
        started = time.monotonic()
        assoc = ae.associate(upstream.host, upstream.port, contexts=contexts,
                             ae_title=upstream.ae_title, ext_neg=roles or None,
                             evt_handlers=handlers, tls_args=tls_args)
        if not assoc.is_established:
            failure = failure_from_association(
                assoc, upstream.name, request.sop_class_uid, "",
                silent_for=(time.monotonic() - started, ae.acse_timeout))
            raise UpstreamUnavailable(f"{failure} ({upstream.host}:{upstream.port})")
        if not any(cx.abstract_syntax == request.sop_class_uid
                   for cx in assoc.accepted_contexts):
            assoc.release()
            raise UpstreamUnavailable(f"does not support SOP class {request.sop_class_uid}")
        return assoc

    def _run(self, task: RelayTask, assoc: Association, upstream: str) -> None:
        request = task.request
        dataset = self._request_dataset(task)
        command = request.command
        msg_id = request.move_message_id or 1
        if command in ("C-FIND", "C-GET", "C-MOVE"):
            assert dataset is not None
            # dimse_timeout counts the upstream's silence, not how long an instance takes
            # to arrive; the acceptor hears that data still comes (RelayProgress).
            progress = RelayProgress(request.request_id)
            task.silence = SilenceWait(float(assoc.dimse_timeout or 60),
                                       lambda: self._send(progress), self._arrivals(request))
            task.silence.install(assoc)
            for answer, identifier in self._query(assoc, request, dataset, msg_id):
                if self._answer(task, upstream, answer, identifier):
                    return
            self._final(task, relay_failure_status(command), f"{upstream} ended the association",
                        upstream)
            return
        sop_class, instance = UID(request.sop_class_uid), UID(request.sop_instance_uid)
        status: Any
        reply: Any
        if command == "N-GET":
            tags = [Tag(t) for t in request.attribute_ids]
            status, reply = assoc.send_n_get(tags, sop_class, instance)
        elif command == "N-SET":
            status, reply = assoc.send_n_set(dataset or Dataset(), sop_class, instance)
        elif command == "N-ACTION":
            status, reply = assoc.send_n_action(dataset, request.action_type_id, sop_class,
                                                instance)
        elif command == "N-CREATE":
            status, reply = assoc.send_n_create(dataset, sop_class, instance or None)
        elif command == "N-DELETE":
            status, reply = assoc.send_n_delete(sop_class, instance), None  # no dataset
        elif command == "N-EVENT-REPORT":
            status, reply = assoc.send_n_event_report(dataset, request.event_type_id, sop_class,
                                                      instance)
        else:
            self._final(task, Status.PROCESSING_FAILURE, f"cannot relay {command}")
            return
        self._answer(task, upstream, status, reply, final=True)

    def _arrivals(self, request: RelayRequest) -> ArrivalWatch | None:
        """A C-MOVE's instances come to an acceptor, not on this association: whether their
        data still flows (a pass-through move's entry names no AE: never touched)."""
        if request.command != "C-MOVE" or not request.move_message_id:
            return None
        return ArrivalWatch(self.config.spool.state_folder("moves"), request.move_message_id)

    @staticmethod
    def _query(assoc: Association, request: RelayRequest, dataset: Dataset, msg_id: int
               ) -> Iterator[tuple[Any, Any]]:
        model = UID(request.sop_class_uid)
        if request.command == "C-FIND":
            return assoc.send_c_find(dataset, model, msg_id=msg_id, priority=request.priority)
        if request.command == "C-GET":
            return assoc.send_c_get(dataset, model, msg_id=msg_id, priority=request.priority)
        return assoc.send_c_move(dataset, request.move_destination, model, msg_id=msg_id,
                                 priority=request.priority)

    @staticmethod
    def _request_dataset(task: RelayTask) -> Dataset | None:
        """The request's dataset, to be written again as received: its sequences of
        undefined length are not parsed (router/dicom/dataset_bytes.py)."""
        if task.dataset is None:
            return None
        implicit = task.request.transfer_syntax_uid == ImplicitVRLittleEndian
        try:
            return shallow_dataset(task.dataset, implicit)
        except Unreadable:  # what pydicom makes of it, as before: the upstream judges
            return decode(BytesIO(task.dataset), implicit, True)

    # --- C-GET sub-operations ---------------------------------------------------------------

    def _on_sub_store(self, event: Any, task: RelayTask) -> int:
        """An instance the upstream sends for a C-GET: hand it on once the acceptor has room."""
        while not task.window.acquire(timeout=1.0):
            if task.cancelled.is_set():
                break
        if task.cancelled.is_set():
            # Do not take more. pynetdicom leaves a C-GET's sub-operation file to the
            # handler (Association._c_store_scp, unlike the SCP's): remove it here.
            Path(event.dataset_path).unlink(missing_ok=True)
            return Status.OUT_OF_RESOURCES
        task.stores += 1
        name = relayed_get_name(task.request.request_id, task.stores)
        target = self.spool.relay / name
        source = Path(event.dataset_path)
        os.replace(source, target)  # the same filesystem (TMPDIR is on the spool)
        request = event.request
        self._send(RelayStore(task.request.request_id, name, str(request.AffectedSOPClassUID),
                              str(request.AffectedSOPInstanceUID),
                              str(event.context.transfer_syntax)))
        return Status.SUCCESS


def _stopped(task: RelayTask, status: int, comment: str) -> tuple[int, str]:
    """A request the worker cancelled because it is stopping ends with a failure the
    requester may retry (0xA700 C-FIND, 0xA701 C-GET/C-MOVE), not with 0xFE00: the
    requester never asked to cancel it."""
    failure = relay_failure_status(task.request.command)
    if task.stopped and status in (Status.CANCEL, failure):
        return failure, "router worker stopped; retry"
    return status, comment


def _request_went(event: Any, task: RelayTask) -> None:
    """EVT_PDU_SENT (after the socket write): the first dataset on a relay's association is
    its request's identifier, so once its last fragment is on the wire a C-CANCEL may follow
    (ahead of it, or between its fragments, the upstream would ignore it or misread both)."""
    if task.request_sent or type(event.pdu).__name__ != "P_DATA_TF":
        return
    for item in event.pdu.presentation_data_value_items:
        if item.data and item.data[0] & 0b11 == 0b10:  # message control header: last data
            task.request_went()
            return


def _keep_response(event: Any, task: RelayTask) -> None:
    """EVT_DIMSE_RECV on an N-service relay: the response's command set, for the fields that
    pynetdicom leaves out of the status dataset it returns."""
    if type(event.message).__name__.endswith("_RSP"):  # not a request the upstream sends
        task.response = event.message.command_set
