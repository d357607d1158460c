"""Outbound TLS failures keep what OpenSSL said, from real handshakes on loopback.

Regression: a PACS that requires a client certificate (TLS 1.3 sends certificate_required
after the handshake, with the answer to the A-ASSOCIATE-RQ) was reported as "closed the
connection during negotiation", and a certificate for another host name as bad_certificate
without OpenSSL's "Hostname mismatch"."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from router.core.config import ClientTLS
from router.core.tls import client_context
from router.dicom.scu_socket import Peer
from router.dicom.store_client import StoreAssociation
from router.dicom.store_failures import AssociationFailed
from router.dicom.store_sender import classify
from tests.pki import CertificateAuthority, Issued

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"), "site-ca")


@contextlib.contextmanager
def tls_server(ca: CertificateAuthority, cert: Issued, *, require_client: bool) -> Iterator[int]:
    """A TLS server that fails every handshake it must, then reads until the client leaves
    (closing at once could reset the connection before the client reads the alert)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    if require_client:
        context.load_verify_locations(cafile=ca.cert_path)
        context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        sock, _ = listener.accept()
        keep = sock.dup()  # wrap_socket closes `sock` when the handshake fails
        with contextlib.suppress(OSError, ValueError):
            context.wrap_socket(sock, server_side=True).close()
        keep.settimeout(10)
        with contextlib.suppress(OSError):
            while keep.recv(65536):
                pass
        keep.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(15)
        listener.close()


def _open(port: int, ca: CertificateAuthority, server_name: str) -> AssociationFailed:
    tls = client_context(ClientTLS(mode="tls", ca=ca.cert_path), "destinations.pacs.tls")
    peer = Peer("127.0.0.1", port, "PACS", "DICOM-ROUTER", 65536, 5.0, 5.0, tls, server_name)
    with pytest.raises(AssociationFailed) as caught:
        StoreAssociation.open(peer, [(CT, EXPLICIT)], acse_timeout=5.0)
    return caught.value


@pytest.mark.parametrize(("issued_for", "require_client", "connected", "said", "certificate"), [
    # A PACS requiring a client certificate: its alert comes after the handshake.
    ("localhost", True, True, "no_client_certificate (TLSV13_ALERT_CERTIFICATE_REQUIRED)",
     "wants a client certificate (tls.cert)"),
    # A certificate for another host: a hostname mismatch.
    ("other.example", False, False, "hostname_mismatch (Hostname mismatch, certificate is "
     "not valid for 'localhost'.)", "certificate not accepted: hostname_mismatch"),
])
def test_a_pacs_certificate_failure_is_a_tls_failure_saying_why(
    ca: CertificateAuthority, issued_for: str, require_client: bool, connected: bool,
    said: str, certificate: str
) -> None:
    pacs = ca.issue(f"pacs-{issued_for}", dns=(issued_for,), server=True)
    with tls_server(ca, pacs, require_client=require_client) as port:
        failure = _open(port, ca, "localhost")
    assert (failure.kind, failure.connected) == ("tls", connected)
    error = classify(failure, "pacs", CT, EXPLICIT)
    assert (error.reason, error.transient) == ("tls", True)
    assert str(error) == f"TLS with pacs failed: {said}"
    assert error.certificate == certificate  # a relayed move fails its sub-operation at once


@contextlib.contextmanager
def closing_server(cert: Issued, version: ssl.TLSVersion) -> Iterator[int]:
    """A TLS server that completes the handshake, then closes without a word: as a TLS 1.3
    PACS refusing the router's certificate reads when its close beats its alert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    context.maximum_version = version
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        sock, _ = listener.accept()
        with contextlib.suppress(OSError, ValueError):
            tls = context.wrap_socket(sock, server_side=True)
            tls.settimeout(10)
            tls.recv(1)  # the A-ASSOCIATE-RQ has come: close, answering nothing
            tls.shutdown(socket.SHUT_RDWR)
        sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(15)
        listener.close()


@pytest.mark.parametrize(("version", "hinted"), [(ssl.TLSVersion.TLSv1_3, True),
                                                 (ssl.TLSVersion.TLSv1_2, False)])
def test_a_close_right_after_a_tls13_handshake_says_what_it_most_likely_is(
    ca: CertificateAuthority, version: ssl.TLSVersion, hinted: bool
) -> None:
    """Regression: storescp +tls -rc refusing the router's client certificate reached the log
    three times in four as "pacs closed the connection during negotiation" and nothing
    else (its close beat its alert), the reset or EOF dropped: nothing to act on."""
    pacs = ca.issue(f"pacs-closing-{version.name}", dns=("localhost",), server=True)
    with closing_server(pacs, version) as port:
        failure = _open(port, ca, "localhost")
    error = classify(failure, "pacs", CT, EXPLICIT)
    assert (error.reason, error.transient) == ("aborted", True)
    assert str(error).startswith("pacs closed the connection during negotiation")
    hint = ("right after the TLS 1.3 handshake: most likely it refused the router's "
            "certificate (tls.cert) or wanted one; its log says why")
    assert (hint in str(error)) is hinted
