"""Why a pynetdicom SCU association was not established (the relays and `dicom-router send`;
the worker's C-STORE sender runs on the router's engine: router/dicom/store_client.py).

pynetdicom says neither whether the TCP connection was made nor why an association ended, so
an EVT_CONN_OPEN handler marks the connected ones and `failure_from_association` reads the
acceptor's answer into the DeliveryError kinds the broker acts on.
"""

from __future__ import annotations

import weakref
from typing import Any

from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE

from router.core.errors import DeliveryError
from router.core.tls import tls_error_of, tls_failure_message

# Outbound associations whose TCP connection was made: tells a refused connection from a
# later rejection or abort. Weak: gone with the association.
_connected: weakref.WeakSet[Association] = weakref.WeakSet()


def mark_connected(event: Any) -> None:
    """EVT_CONN_OPEN handler of an outbound association."""
    _connected.add(event.assoc)


def was_connected(assoc: Association) -> bool:
    return assoc in _connected


def recover_rejection(assoc: Association) -> None:
    """Read an A-ASSOCIATE-RJ that pynetdicom 3.0.4 left unread. When the peer rejects at
    once, pynetdicom's DUL thread takes the RJ and closes the transport before the thread in
    `_negotiate_as_requestor` checks that the transport is connected: that thread then
    aborts ("Failed to connect") and never reads the RJ from the DUL's queue, so a rejection
    with its reason looked like an abort (`dicom-router send`, about one in 20 under load)."""
    if assoc.is_established or assoc.is_rejected:
        return
    queue = getattr(getattr(assoc, "dul", None), "to_user_queue", None)
    for primitive in list(getattr(queue, "queue", ())):
        if isinstance(primitive, A_ASSOCIATE) and getattr(primitive, "result", None) in (1, 2):
            assoc.acceptor.primitive = primitive
            assoc.is_rejected, assoc.is_aborted = True, False
            return


def rejection_words(rejection: Any) -> str:
    """An A-ASSOCIATE-RJ in words and codes: `rejected transient, by service provider
    (presentation): local limit exceeded (result 2, source 3, reason 2)`."""
    result, source = getattr(rejection, "result", None), getattr(rejection, "result_source", None)
    codes = f"(result {result}, source {source}, reason {getattr(rejection, 'diagnostic', None)})"
    try:
        reason = str(rejection.reason_str)
        words = (f"{rejection.result_str.lower()}, by {rejection.source_str.lower()}: "
                 f"{reason[:1].lower()}{reason[1:]}")
    except (AttributeError, KeyError, TypeError, ValueError):
        return codes  # pynetdicom has no words for these codes
    return f"{words} {codes}"


def failure_from_association(
    assoc: Association, destination: str, sop_class: str, syntax: str,
    silent_for: tuple[float, float] | None = None,
) -> DeliveryError:
    """`silent_for`: (seconds the request took, pynetdicom's acse_timeout): an abort at the
    timeout is pynetdicom's own, the peer having said nothing."""
    recover_rejection(assoc)
    tls_error = tls_error_of(getattr(assoc, "dul", None))
    if tls_error is not None and not assoc.is_rejected:
        # pynetdicom swallowed it (a failed handshake read as "cannot connect", a refused
        # client certificate as an abort): say it as the C-STORE sender does.
        return DeliveryError("tls", tls_failure_message(destination, tls_error),
                             transient=True)
    if not was_connected(assoc):
        return DeliveryError("connection", f"cannot connect to {destination}", transient=True)
    answer = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_aborted and answer is not None and getattr(answer, "result", None) == 0:
        # Accepted, but not one proposed context: pynetdicom aborts such an association.
        return DeliveryError(
            "no_context",
            f"{destination} accepts none of the proposed contexts (SOP class {sop_class} in "
            f"transfer syntax {syntax})", transient=False)
    if assoc.is_rejected:
        rejection = assoc.acceptor.primitive
        result = getattr(rejection, "result", None)
        # result 2 = rejected-transient (e.g. congestion); 1 = permanent (e.g. unknown AE title)
        return DeliveryError("rejected", f"{destination} rejected the association: "
                             f"{rejection_words(rejection)}", transient=result == 2)
    if assoc.is_aborted and silent_for is not None and silent_for[0] >= silent_for[1]:
        return DeliveryError("aborted", f"{destination} did not answer the association request "
                             f"within {silent_for[1]:g} s", transient=True)
    if assoc.is_aborted:
        return DeliveryError("aborted", f"{destination} aborted the association", transient=True)
    return DeliveryError("aborted", f"{destination} closed the connection during negotiation",
                         transient=True)
