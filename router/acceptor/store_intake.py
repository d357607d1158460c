"""The C-STORE an association is receiving: its dataset written to the spool's incoming/ as
its PDVs arrive, then the store handler's answer; or, when it cannot be taken (its SOP class
is not its context's, no file can be created for it), its dataset received into nothing and
a refusal answered. No socket here: the connection feeds the fragments and sends the answer.

One at a time: a C-STORE's fragments are not interleaved with another message's (PS3.7 9.3.1).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from router.acceptor.connection_settings import ConnectionSettings
from router.acceptor.session import AssociationSession, ReceivedStore
from router.acceptor.store_handler import StoreHandler
from router.acceptor.store_receiver import StoreReceiver, file_meta
from router.core import metrics
from router.core.dimse_status import Status
from router.core.disk_space import describe_oserror
from router.core.uids import uid_for_log
from router.dicom.engine import CStoreRQ, CStoreRSP, SendCommand
from router.relay.move_registry import ArrivingInstance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreRefusal:
    """A C-STORE answered without being stored, once its dataset has gone by (into nothing)."""

    context_id: int
    command: CStoreRQ
    status: int
    comment: str
    label: str  # dicom_router_instances_received_total{result}


class StoreIntake:
    def __init__(self, settings: ConnectionSettings, handler: StoreHandler,
                 session: AssociationSession) -> None:
        self.settings = settings
        self.handler = handler
        self.session = session
        self._receiver: StoreReceiver | None = None
        self._store: tuple[int, CStoreRQ, str] | None = None  # context, command, syntax
        self._refusal: StoreRefusal | None = None
        self._move: ArrivingInstance | None = None  # a relayed C-MOVE's instance arriving

    @property
    def receiving(self) -> bool:
        """A C-STORE's dataset is arriving (to be stored or refused)."""
        return self._receiver is not None or self._refusal is not None

    @property
    def stored_so_far(self) -> int:
        """Bytes of the arriving dataset received so far (0 when none is being stored)."""
        return self._receiver.received if self._receiver is not None else 0

    def begin(self, context_id: int, command: CStoreRQ, negotiated: str | None,
              transfer_syntax: str) -> None:
        """A C-STORE-RQ arrived on `context_id`, negotiated for the abstract syntax
        `negotiated` with `transfer_syntax`; its dataset follows."""
        self.discard()  # a dataset left unfinished by a new command is not kept
        self._refusal = None
        offer = self.settings.offer
        if negotiated != command.sop_class_uid:
            # PS3.7 9.1.1.1: the SOP class is the context's abstract syntax. Anything else
            # would be filed under a class nobody negotiated.
            # A malformed UID is described, never quoted (README "Hostile input").
            log.warning("refusing a C-STORE from %s: SOP class %s on a context negotiated "
                        "for %s", self.session.address, uid_for_log(command.sop_class_uid),
                        negotiated)
            self._refusal = StoreRefusal(context_id, command, Status.SOP_CLASS_NOT_SUPPORTED,
                                         "SOP class is not the presentation context's",
                                         "rejected")
            return
        if command.sop_class_uid not in offer.storage_classes:
            # A C-STORE on a Verification or query context: no destination could take it
            # (it would dead-letter as no_context), so the sender hears it now.
            log.warning("refusing a C-STORE from %s: %s is not a storage SOP class",
                        self.session.address, negotiated)
            self._refusal = StoreRefusal(context_id, command, Status.SOP_CLASS_NOT_SUPPORTED,
                                         "SOP class is not a storage SOP class", "rejected")
            return
        meta = file_meta(command.sop_class_uid, command.sop_instance_uid, transfer_syntax,
                         offer.implementation_class_uid, offer.implementation_version)
        try:
            receiver = StoreReceiver(self.settings.incoming, meta,
                                     self.settings.max_dataset_bytes, self.settings.recycler)
        except OSError as exc:  # no inode left, too many open files, incoming/ gone
            why = describe_oserror(exc, self.settings.incoming)
            log.error("cannot create a file for a C-STORE in %s (%s); answering 0xA700",
                      self.settings.incoming, why)
            self.handler.admission.spool_failed(why)  # /readyz 503 until it works
            reason = ("no free inodes" if why.startswith("no free inodes")
                      else exc.strerror or "cannot create a file")
            self._refusal = StoreRefusal(
                context_id, command, Status.OUT_OF_RESOURCES,
                f"router spool: {reason}; retry later"[:64],
                "out_of_resources")
            return
        self._store, self._receiver = (context_id, command, transfer_syntax), receiver
        self._move = self._arriving_for_a_move(command)

    def _arriving_for_a_move(self, command: CStoreRQ) -> ArrivingInstance | None:
        """An instance of a relayed C-MOVE in progress: while its data arrives the move's
        worker hears that its upstream is not silent (router/relay/move_registry.py)."""
        relay = self.handler.relay
        if relay is None or command.move_originator_message_id is None:
            return None
        move = relay.move_instance_arriving(command.move_originator_message_id,
                                            command.move_originator_ae or None,
                                            self.session.calling_ae)
        if move is not None:
            move.data()  # its command is the first sign of it
        return move

    def take(self, parts: list[bytes | memoryview], last: bool) -> SendCommand | None:
        """Adjacent fragments of the dataset; the C-STORE-RSP to send after the last one."""
        if self._receiver is not None:
            self._receiver.write_parts(parts)
            if self._move is not None:
                self._move.data()
            return self._stored() if last else None
        if self._refusal is not None and last:
            refusal, self._refusal = self._refusal, None
            if self.session.progress is not None:
                self.session.progress.message_done()
            return _refused(refusal)
        return None

    def discard(self) -> None:
        """The association ended with a dataset still arriving: keep nothing of it."""
        receiver, self._receiver = self._receiver, None
        self._move = None
        if receiver is not None:
            receiver.discard()

    def _stored(self) -> SendCommand:
        receiver, self._receiver = self._receiver, None
        self._move = None
        assert receiver is not None and self._store is not None
        (context_id, command, transfer_syntax), self._store = self._store, None
        session = self.session
        path = receiver.finish()
        session.dataset_truncated, session.disk_full = receiver.truncated, receiver.disk_full
        taken = False
        try:
            status, comment, taken = self.handler.handle(ReceivedStore(
                session, command.sop_class_uid, command.sop_instance_uid, transfer_syntax,
                path, command.priority, command.move_originator_ae or None,
                command.move_originator_message_id, synced=receiver.synced,
                size=receiver.size, head=bytes(receiver.head)))
        finally:
            if not taken:  # refused, dropped by a rule, or failed: nothing of it stays
                with contextlib.suppress(OSError):  # a broken spool: its start wipes it
                    path.unlink()
            if session.progress is not None:
                session.progress.message_done()
        return SendCommand(context_id, CStoreRSP(
            command.message_id, command.sop_class_uid, command.sop_instance_uid, status,
            comment))


def _refused(refusal: StoreRefusal) -> SendCommand:
    command = refusal.command
    metrics.INSTANCES_RECEIVED.labels(refusal.label).inc()
    metrics.DIMSE_REQUESTS.labels("C-STORE", f"0x{refusal.status:04X}").inc()
    return SendCommand(refusal.context_id, CStoreRSP(
        command.message_id, command.sop_class_uid, command.sop_instance_uid, refusal.status,
        refusal.comment))
