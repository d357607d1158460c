"""pynetdicom settings every router process needs, applied in each process's entry point.

pynetdicom's `_config` is global per process, so spawned children must set it themselves.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pydicom.config
from pynetdicom import _config, evt

from router.dicom import compat
from router.dicom.quick_ack import ack_every_receive

log = logging.getLogger(__name__)

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
    # Hostile values would otherwise be logged by pydicom once per access; the router states
    # its own refusal once, with the reason.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def sends_files_as_they_are() -> bool:
    """True once configure_pynetdicom(chunked_send=True) ran in this process."""
    return bool(_config.STORE_SEND_CHUNKED_DATASET)


def tune_scu_socket(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler of the router's pynetdicom SCU associations: Nagle off (ours
    would cost ~40 ms per C-STORE), and a quick ACK after every receive (a DCMTK peer's
    Nagle would: 46 ms per C-GET sub-operation from a dcmqrscp on its defaults, quick_ack.py)."""
    sock: Any = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ack_every_receive(sock)
