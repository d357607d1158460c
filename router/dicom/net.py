"""pynetdicom settings every router process needs, applied in each process's entry point.

pynetdicom's `_config` is global per process, so spawned children must set it themselves.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import pydicom.config
import pynetdicom.acse
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, evt
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from router.dicom import compat, reactors

log = logging.getLogger(__name__)

# Accepted as sent, so that the router forwards the very bytes it received.
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
TRANSFER_SYNTAXES: list[str] = [
    *_UNCOMPRESSED,
    *[ts for ts in AllTransferSyntaxes if ts not in _UNCOMPRESSED],
]


def configure_pynetdicom(*, chunked_receive: bool = False, chunked_send: bool = False) -> None:
    compat.require_supported()
    # Event-driven association loops (router/dicom/reactors.py); DICOM_ROUTER_POLLING_LOOPS=1 keeps
    # pynetdicom's own, to measure the difference or to rule the replacement out.
    if os.environ.get("DICOM_ROUTER_POLLING_LOOPS", "") not in ("1", "true", "yes"):
        reactors.install()
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


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: turn Nagle off, which otherwise costs ~40 ms per C-STORE."""
    sock: Any = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _negotiate_in_requestor_order(
    rq_contexts: list[PresentationContext],
    ac_contexts: list[PresentationContext],
    roles: Any = None,
) -> Any:
    """Accept, per proposed context, the first transfer syntax *the sender* listed that we support.

    pynetdicom picks by the acceptor's own order, which makes a sender that prefers the syntax
    its file is in convert it instead. The router wants the instance exactly as the sender has it.
    """
    supported = {cx.abstract_syntax: cx for cx in ac_contexts}
    reordered = []
    for rq in rq_contexts:
        ac = supported.get(rq.abstract_syntax)
        if ac is None:
            continue
        ours = set(ac.transfer_syntax)
        cx = PresentationContext()
        cx.abstract_syntax = ac.abstract_syntax
        cx.transfer_syntax = [ts for ts in rq.transfer_syntax if ts in ours]
        cx.scu_role, cx.scp_role = ac.scu_role, ac.scp_role
        reordered.append((rq, cx))  # an empty list still yields "transfer syntax not supported"
    results: list[PresentationContext] = []
    reply_roles: list[Any] = []
    # Negotiate each proposal against its own reordered copy: one SOP class may be proposed
    # several times with different syntax lists.
    for rq in rq_contexts:
        match = [cx for r, cx in reordered if r is rq]
        res, rr = negotiate_as_acceptor([rq], match, roles)
        results.extend(res)
        reply_roles.extend(r for r in rr if r not in reply_roles)
    return sorted(results, key=lambda cx: cx.context_id or 0), reply_roles


def prefer_requestor_transfer_syntax() -> None:
    setattr(pynetdicom.acse, "negotiate_as_acceptor", _negotiate_in_requestor_order)  # noqa: B010
