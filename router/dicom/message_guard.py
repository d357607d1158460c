"""Bounds on each DIMSE message pynetdicom assembles from an inbound association, and what is
left of one when the association ends early (see router/dicom/guarded_transport.py)."""

from __future__ import annotations

import contextlib
import errno
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom.association import Association

from router.core import metrics
from router.dicom.relay_association import RouterAssociation

if TYPE_CHECKING:  # guarded_transport imports this module
    from router.dicom.guarded_transport import ReadLimits

log = logging.getLogger(__name__)

MAX_COMMAND_SET_BYTES = 64 * 1024  # a command set is a few hundred bytes
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class MessageGuard:
    """Bounds each DIMSE message pynetdicom assembles in memory; wraps dimse.receive_primitive.

    A C-STORE's dataset goes to a file (chunked receive): past `max_dataset_bytes` the rest is
    not written, and the association is marked (`router_dataset_truncated`) so that the store
    handler answers 0xC003 instead of keeping a cut file. Every other dataset (C-FIND
    identifiers, N-service datasets, a C-ECHO that claims one) is held in memory by pynetdicom
    until its last fragment, as is every command set: those are bounded here.
    """

    def __init__(self, assoc: RouterAssociation, limits: ReadLimits) -> None:
        self.assoc = assoc
        self.dimse = assoc.dimse
        self.receive = assoc.dimse.receive_primitive
        self.limits = limits
        self.command_bytes = 0
        self.dataset_bytes = 0
        self.file_bytes = 0
        self.refused = False

    def __call__(self, primitive: Any) -> None:
        if self.refused:
            return  # the association is being aborted; nothing more is assembled
        message = self.dimse.message
        to_file = getattr(message, "_data_set_file", None) is not None
        arrived = 0
        for _, data in primitive.presentation_data_value_list:
            if data and data[0] & 1:
                self.command_bytes += len(data) - 1
            elif to_file:
                self.file_bytes += len(data) - 1
                arrived += len(data) - 1
            else:
                self.dataset_bytes += len(data) - 1
                arrived += len(data) - 1
        progress = self.assoc.router_progress
        if progress is not None and arrived > 0:
            progress.add(arrived)
        problem = self._problem()
        if problem is not None:
            self._refuse(problem)
            return
        limit = self.limits.max_dataset_bytes
        if to_file and limit is not None and self.file_bytes > limit:
            self._truncate(primitive)
        try:
            self.receive(primitive)
        except OSError as exc:
            message = self.dimse.message  # may have become a C-STORE in this very primitive
            if exc.errno not in DISK_FULL or getattr(message, "_data_set_file", None) is None:
                raise
            self._disk_full(primitive, message)
        if self.dimse.message is None:  # complete: the next message starts from zero
            self.command_bytes = self.dataset_bytes = self.file_bytes = 0
            if progress is not None:
                progress.message_done()

    def _disk_full(self, primitive: Any, message: Any) -> None:
        """The spool filled up while a C-STORE was being written: receive the rest into
        nothing, so that the store handler can answer 0xA700 (Out of Resources) and the
        sender retry, instead of pynetdicom aborting the association."""
        log.warning("spool disk full while receiving a C-STORE from %s (%s); it will be "
                    "answered 0xA700", self.assoc.requestor.ae_title, self.assoc.requestor.address)
        self.assoc.router_disk_full = True
        with contextlib.suppress(OSError):
            message._data_set_file.close()  # its buffer cannot be flushed: drop it
        # pynetdicom unlinks the file by this name after the handler: the partial file.
        message._data_set_file = _Sink(str(message._data_set_path))
        # Replay the dataset fragments, without payload: the one that failed may have been
        # the last, which completes the message. The command set was decoded before.
        primitive.presentation_data_value_list = [
            [context, data[:1]] for context, data in primitive.presentation_data_value_list
            if data and not data[0] & 1
        ]
        self.receive(primitive)

    def _truncate(self, primitive: Any) -> None:
        """Keep the fragment flags, drop the payload: the disk holds at most the limit."""
        self.assoc.router_dataset_truncated = True
        primitive.presentation_data_value_list = [  # its setter wants [id, bytes] lists
            [context, data if not data or data[0] & 1 else data[:1]]
            for context, data in primitive.presentation_data_value_list
        ]

    def _problem(self) -> str | None:
        if self.command_bytes > MAX_COMMAND_SET_BYTES:
            return f"a command set longer than {MAX_COMMAND_SET_BYTES} bytes"
        if self.dataset_bytes > self.limits.max_message_bytes:
            return (f"a dataset held in memory longer than listen.max_message_bytes "
                    f"({self.limits.max_message_bytes})")
        return None

    def _refuse(self, problem: str) -> None:
        self.refused = True
        log.warning("aborting the association from %s (%s): it sent %s",
                    self.assoc.requestor.ae_title, self.assoc.requestor.address, problem)
        metrics.CONNECTIONS_DROPPED.labels("message_too_large").inc()
        discard_partial_message(self.assoc)
        # Evt19 (invalid PDU): the state machine sends an A-ABORT and closes (AA-8).
        self.assoc.dul.event_queue.put("Evt19")


class _Sink:
    """Stands in for pynetdicom's NamedTemporaryFile once the disk is full: takes writes
    (through `.file` too, as pynetdicom flushes) and keeps nothing. `name` is the partial
    file's, which pynetdicom unlinks when the handler is done (never a device's name)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def file(self) -> _Sink:
        return self

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def discard_partial_message(assoc: Association) -> None:
    """Remove the temp file of a C-STORE whose association ended before it was complete."""
    message = assoc.dimse.message
    handle = getattr(message, "_data_set_file", None)
    path: Path | None = getattr(message, "_data_set_path", None)
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
