"""pynetdicom settings every router process needs, applied in each process's entry point.

pynetdicom's `_config` is global per process, so spawned children must set it themselves.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

import pydicom.config
from pynetdicom import _config, evt

from router.dicom import compat
from router.dicom.quick_ack import ack_every_receive

log = logging.getLogger(__name__)

# What pynetdicom logs as ERROR when the router's association request is rejected (three
# lines), aborted, or not answered within its ACSE timeout. A busy upstream rejecting is
# normal life, and the router logs each of these itself, with who and why (scu_outcome.py;
# the relay and `send` time the request and say "did not answer ... within N s").
NEGOTIATION_ECHOES = ("Association Rejected", "Result: ", "Reason: ", "Association Aborted",
                      "ACSE timeout reached while waiting for response to association request")


class NegotiationEchoes(logging.Filter):
    """Drops pynetdicom's ERROR lines of a rejected or aborted association request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR
                    and record.getMessage().startswith(NEGOTIATION_ECHOES))


_NEGOTIATION_ECHOES = NegotiationEchoes()  # one instance: added once however often called


def configure_pynetdicom(*, chunked_receive: bool = False, chunked_send: bool = False) -> None:
    compat.require_supported()
    # Keep patient data out of logs.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.STORE_RECV_CHUNKED_DATASET = chunked_receive
    _config.STORE_SEND_CHUNKED_DATASET = chunked_send
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # It logs two errors for every refused connection; the broker logs each pause once.
    logging.getLogger("pynetdicom.transport").setLevel(logging.CRITICAL)
    logging.getLogger("pynetdicom.acse").addFilter(_NEGOTIATION_ECHOES)
    # Hostile values would otherwise be logged by pydicom once per access; the router states
    # its own refusal once, with the reason.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def sends_files_as_they_are() -> bool:
    """True once configure_pynetdicom(chunked_send=True) ran in this process."""
    return bool(_config.STORE_SEND_CHUNKED_DATASET)


def tune_scu_socket(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler of the router's pynetdicom SCU associations: Nagle off (ours
    would cost ~40 ms per C-STORE), and a quick ACK after every receive (a DCMTK peer's
    Nagle would: 46 ms per C-GET sub-operation from a dcmqrscp on its defaults, quick_ack.py).
    Also keeps every response for the call that waits for it (leave_responses_to_callers)."""
    # The guard first: pynetdicom swallows a handler's exception, so a socket option that
    # failed would otherwise leave the association without it, silently.
    leave_responses_to_callers(event.assoc.dimse)
    sock: Any = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ack_every_receive(sock)


def leave_responses_to_callers(dimse: Any) -> None:
    """Let pynetdicom's reactor thread take only requests from the association's message
    queue, never the response a send_c_*() call waits for.

    pynetdicom 3.0's send_c_*() pauses the reactor by clearing a checkpoint and waiting for
    its `_is_paused` flag, which the reactor sets just *before* it waits on that checkpoint.
    A reactor that has passed the wait (the previous call had just set the checkpoint again)
    reads the queue once more while the new request goes out: a fast answer is then taken
    by it, logged as "Received unexpected C-STORE service message" and dropped, and the
    call waits out its DIMSE timeout and aborts. Seen in `dicom-router send` beside a busy
    loop: one C-STORE of 140 went unanswered in one run of every 3 to 15; a relayed C-FIND
    or C-MOVE could lose its answer alike. The reactor is the queue's only non-blocking
    reader (its requests, e.g. an N-EVENT-REPORT, are all it serves), so the non-blocking
    read skips anything else.
    """
    messages = dimse.msg_queue
    blocking_get = dimse.get_msg

    def get_msg(block: bool = False) -> tuple[Any, Any]:
        if block:
            return blocking_get(block)  # type: ignore[no-any-return]
        with messages.mutex:  # look and take as one step: a caller may take it meanwhile
            if not messages.queue:
                return None, None
            message = messages.queue[0][1]
            if message is None or not message.is_valid_request:
                return None, None  # a response, or the wake-up of an abort: the caller's
            item = messages.queue.popleft()
            messages.not_full.notify()
            return item  # type: ignore[no-any-return]

    dimse.get_msg = get_msg


def abort_waking_waiter(assoc: Any) -> None:
    """Abort an association from another thread than the one waiting on it for a DIMSE
    message. pynetdicom wakes that wait (None, None on its message queue) only when the peer
    aborts or closes: after a local abort it would wait out dimse_timeout. Its abort waits
    for the reader thread, which a stalled link holds in the middle of a PDU: wake it first."""
    try:
        wake_reader(assoc)
        assoc.abort()
    finally:
        assoc.dimse.msg_queue.put((None, None))


def wake_reader(assoc: Any) -> None:
    """A DUL thread blocked in the middle of a PDU (the link stalled, the connection still
    open) would never take an abort: shut the socket down so that its read ends."""
    transport = getattr(assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
