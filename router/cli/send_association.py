"""Associations for `send` and `echo`: the peer, opening (saying why it fails), closing, C-ECHO."""

from __future__ import annotations

import socket
import ssl
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from router.cli.send_files import Pair
from router.core.config import DEFAULT_MAX_PDU
from router.core.errors import RouterError
from router.core.tls import failure_reason
from router.dicom.bounded_pdu_queue import bound_sends
from router.dicom.net import tune_scu_socket
from router.dicom.scu_outcome import mark_connected, recover_rejection, was_connected

_ALERT_WAIT = 2.0  # seconds a TLS probe waits for an alert after its handshake

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


class AssociationError(RouterError):
    """No association: refused connection, rejection, abort. A usage problem (exit 2)."""


class NoContextAccepted(RouterError):
    """The peer accepted the association but none of its presentation contexts."""


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = "DICOM-SEND"
    max_pdu: int = DEFAULT_MAX_PDU
    tls: ssl.SSLContext | None = None
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# --- addresses ---------------------------------------------------------------------------------

def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:11112)")
    return host, int(port)


# --- associations ------------------------------------------------------------------------------

# Associations that received a PDU from the peer: one that got nothing and was aborted when
# its ACSE timeout ran out was not aborted by the peer, it never answered.
_heard: weakref.WeakSet[Association] = weakref.WeakSet()


def _on_connected(event: Any) -> None:
    tune_scu_socket(event)
    mark_connected(event)  # tells a refused connection from a later failure


def _on_pdu(event: Any) -> None:
    _heard.add(event.assoc)


def application_entity(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_ae)
    ae.maximum_pdu_size = peer.max_pdu
    ae.connection_timeout = peer.connect_timeout
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.dimse_timeout
    return ae


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _tls_problem(peer: Peer, tls: ssl.SSLContext) -> str | None:
    """Why TLS with the peer fails, from a probe; None when the probe sees no problem.

    A TLS 1.3 server checks the client certificate after the handshake, so the probe also
    waits briefly for an alert: a DICOM peer otherwise stays silent until it is spoken to.
    """
    try:
        with socket.create_connection((peer.host, peer.port), timeout=peer.connect_timeout) \
                as raw, tls.wrap_socket(raw, server_hostname=peer.host) as secure:
            secure.settimeout(_ALERT_WAIT)
            secure.recv(1)
    except ssl.SSLError as exc:
        detail = getattr(exc, "verify_message", None) or exc.reason
        return f"TLS failed: {failure_reason(exc)} ({detail})"
    except OSError:
        return None
    return None


def _diagnose_connection(peer: Peer) -> str:
    """pynetdicom does not say why a connection failed: a short probe does."""
    try:
        socket.create_connection((peer.host, peer.port), timeout=peer.connect_timeout).close()
    except OSError as exc:
        return _lower_first(exc.strerror or str(exc) or type(exc).__name__)
    problem = _tls_problem(peer, peer.tls) if peer.tls is not None else None
    return problem or "the connection failed"


def _with_tls_problem(message: str, peer: Peer) -> str:
    problem = _tls_problem(peer, peer.tls) if peer.tls is not None else None
    return f"{message}: {problem}" if problem else message


def _rejection(assoc: Association) -> str:
    answer: Any = assoc.acceptor.primitive
    return (f"{_lower_first(answer.reason_str)} ({_lower_first(answer.result_str)}, "
            f"source: {_lower_first(answer.source_str)})")


def _failure(assoc: Association, peer: Peer, waited: float) -> RouterError:
    recover_rejection(assoc)
    if not was_connected(assoc):
        return AssociationError(f"cannot connect to {peer}: {_diagnose_connection(peer)}")
    answer = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_aborted and getattr(answer, "result", None) == 0:
        # Accepted, but no proposed context was: pynetdicom aborts such an association.
        return NoContextAccepted(f"{peer} accepted none of the proposed presentation contexts")
    if assoc.is_rejected:
        return AssociationError(f"association rejected by {peer}: {_rejection(assoc)}")
    if assoc not in _heard and waited >= peer.acse_timeout:
        # pynetdicom aborts it itself when its ACSE timeout runs out: the peer said nothing.
        return AssociationError(_with_tls_problem(
            f"{peer}: no answer to the association request within {peer.acse_timeout:g} s",
            peer))
    if assoc.is_aborted:
        return AssociationError(_with_tls_problem(
            f"{peer} aborted the association during negotiation", peer))
    return AssociationError(_with_tls_problem(
        f"{peer} closed the connection during negotiation", peer))


def associate(ae: AE, peer: Peer, pairs: Iterable[Pair]) -> Association:
    """An association proposing one context per pair, each with exactly its one syntax."""
    contexts = [build_context(sop_class, syntax) for sop_class, syntax in pairs]
    tls_args = (peer.tls, peer.host) if peer.tls is not None else None
    started = time.monotonic()
    try:
        assoc = ae.associate(peer.host, peer.port, contexts=contexts, ae_title=peer.called_ae,
                             tls_args=tls_args,
                             evt_handlers=[(evt.EVT_CONN_OPEN, _on_connected),
                                           (evt.EVT_PDU_RECV, _on_pdu)])
    except socket.gaierror as exc:
        # pynetdicom resolves the name outside its own error handling.
        raise AssociationError(f"cannot connect to {peer}: cannot resolve {peer.host!r}: "
                               f"{exc.strerror or exc}") from None
    except OSError as exc:
        raise AssociationError(f"cannot connect to {peer}: {exc.strerror or exc}") from None
    if not assoc.is_established:
        raise _failure(assoc, peer, time.monotonic() - started)
    bound_sends(assoc)
    return assoc


def accepted_pairs(assoc: Association) -> set[Pair]:
    return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts}


def echo(peer: Peer) -> int:
    """C-ECHO the peer; its status (0x0000 is Success). AssociationError when there is no
    association, RouterError when no answer comes."""
    ae = application_entity(peer)
    assoc = associate(ae, peer, [(VERIFICATION, IMPLICIT_VR_LE)])
    try:
        response: Any = assoc.send_c_echo()
    finally:
        close(assoc)
    status = getattr(response, "Status", None)
    if status is None:
        raise RouterError(f"{peer} did not answer the C-ECHO (timeout or association lost)")
    return int(status)


def close(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()
    elif not assoc.is_aborted:
        assoc.abort()
