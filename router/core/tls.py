"""TLS contexts for the listener and for destinations (DICOM secure transport, TLS 1.2/1.3).

Encrypted keys get their password from a file, an environment variable or a command, and
always through `load_cert_chain(password=callable)`: without it OpenSSL prompts on the
terminal and a container hangs. Every loading problem is a TLSConfigError naming the key.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.core.config import ClientTLS, ListenerTLS, RouterConfig, TLSBase
from router.core.dn_text import rfc4514
from router.core.errors import TLSConfigError
from router.core.tls_dates import check_dates

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def key_password(config: TLSBase, where: str) -> Callable[[], bytes] | None:
    """A callable for load_cert_chain, or None for an unencrypted key."""
    if config.key_password_file is not None:
        path = config.key_password_file

        def from_file() -> bytes:
            try:
                return path.read_bytes().rstrip(b"\r\n")
            except OSError as exc:
                raise TLSConfigError(f"{where}.key_password_file: cannot read {path}: "
                                     f"{exc.strerror}") from None
        return from_file
    if config.key_password_env is not None:
        name = config.key_password_env

        def from_env() -> bytes:
            if name not in os.environ:
                raise TLSConfigError(f"{where}.key_password_env: ${name} is not set")
            return os.environ[name].encode()
        return from_env
    if config.key_password_command is not None:
        command = config.key_password_command

        def from_command() -> bytes:
            try:
                done = subprocess.run(command, capture_output=True, timeout=30, check=False,
                                      stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise TLSConfigError(f"{where}.key_password_command failed: {exc}") from None
            if done.returncode != 0:
                raise TLSConfigError(f"{where}.key_password_command exited with "
                                     f"{done.returncode}") from None
            return done.stdout.rstrip(b"\r\n")
        return from_command
    return None


def _readable(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


def _load_identity(context: ssl.SSLContext, config: TLSBase, where: str) -> None:
    if config.cert is None or config.key is None:
        return
    # Read both first: OpenSSL's errors name neither file (FileNotFoundError.filename is None,
    # a PEM error is "PEM lib" for a bad certificate, a bad key and a wrong password alike).
    _readable(config.cert, f"{where}.cert")
    key_pem = _readable(config.key, f"{where}.key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=config.cert)
    except ssl.SSLError:
        raise TLSConfigError(f"{where}.cert: {config.cert} holds no PEM certificate") from None
    password = key_password(config, where)
    try:
        # A password callable even for plain keys: OpenSSL must never fall back to a prompt.
        context.load_cert_chain(config.cert, config.key, password=password or (lambda: b""))
    except ssl.SSLError as exc:
        raise TLSConfigError(_key_problem(config, where, key_pem, exc)) from None


def _key_problem(config: TLSBase, where: str, key_pem: bytes, exc: ssl.SSLError) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"{where}.key: {config.key} is not the key of the certificate {config.cert}"
    if b"PRIVATE KEY-----" not in key_pem:
        return f"{where}.key: {config.key} holds no PEM private key"
    if b"ENCRYPTED" not in key_pem:
        return f"{where}.key: cannot load {config.key} ({exc.reason or exc})"
    source = next((k for k in ("key_password_file", "key_password_env", "key_password_command")
                   if getattr(config, k) is not None), None)
    if source is None:
        return (f"{where}.key: {config.key} is encrypted: give key_password_file, "
                "key_password_env or key_password_command")
    return f"{where}.{source}: wrong password for the encrypted key {config.key}"


def _load_ca(context: ssl.SSLContext, config: TLSBase, where: str) -> None:
    if config.ca is None:
        return
    _readable(config.ca, f"{where}.ca")
    try:
        context.load_verify_locations(cafile=config.ca)
    except ssl.SSLError:
        raise TLSConfigError(f"{where}.ca: {config.ca} holds no PEM certificate") from None


def _harden(context: ssl.SSLContext, config: TLSBase, where: str) -> None:
    context.minimum_version = _VERSIONS[config.min_version]
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.set_ciphers(config.ciphers)
    except ssl.SSLError:
        raise TLSConfigError(f"{where}.ciphers: no cipher matches {config.ciphers!r}") from None


def server_context(config: ListenerTLS, where: str = "listen.tls") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, config, where)
    _load_identity(context, config, where)
    check_dates(config, where, "every client would refuse it")
    _load_ca(context, config, where)
    _load_crl(context, config, where)
    context.verify_mode = ssl.CERT_REQUIRED if config.mode == "mtls" else ssl.CERT_NONE
    return context


def _load_crl(context: ssl.SSLContext, config: ListenerTLS, where: str) -> None:
    """Client certificates listed in the CRL file are refused (checked for the leaf)."""
    if config.crl is None:
        return
    _readable(config.crl, f"{where}.crl")
    try:
        context.load_verify_locations(cafile=config.crl)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{where}.crl: cannot load CRL file {config.crl}: {exc}") from None
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


class RecordingSSLSocket(ssl.SSLSocket):
    """Remembers the TLS error it met for the thread that met it: pynetdicom's transport
    logs one and turns it into "cannot connect" or a closed connection (a refused client
    certificate comes after a TLS 1.3 handshake, at the first read), so the relays read it
    back with `tls_error_of(assoc.dul)` (the DUL thread does every socket call)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except ssl.SSLError as exc:
            _record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            _record(exc)
            raise

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except ssl.SSLError as exc:
            _record(exc)
            raise


_errors: weakref.WeakKeyDictionary[threading.Thread, ssl.SSLError] = \
    weakref.WeakKeyDictionary()


def _record(exc: ssl.SSLError) -> None:
    _errors[threading.current_thread()] = exc


def tls_error_of(thread: object) -> ssl.SSLError | None:
    """The TLS error a RecordingSSLSocket met in `thread` (an association's DUL), if any."""
    return _errors.get(thread) if isinstance(thread, threading.Thread) else None


def tls_failure_message(peer: str, exc: ssl.SSLError) -> str:
    """"TLS with pacs failed: unknown_ca (unable to get local issuer certificate)"."""
    detail = getattr(exc, "verify_message", None) or exc.reason  # "Hostname mismatch..."
    return f"TLS with {peer} failed: {failure_text(exc)} ({detail})"


def client_context(config: ClientTLS, where: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server: SERVER_AUTH
    context.sslsocket_class = RecordingSSLSocket
    _harden(context, config, where)
    _load_ca(context, config, where)
    _load_identity(context, config, where)
    context.check_hostname = config.verify_hostname
    return context


def check_contexts(config: RouterConfig) -> None:
    """Build every TLS context `run` builds (listener, destinations, known_aes), so that
    `check-config`, `run` and a reload refuse the same material with the same message."""
    if config.listen.tls.mode != "off":
        server_context(config.listen.tls)
    for name, dest in config.destinations.items():
        tls = getattr(dest, "tls", None)
        if tls is not None and tls.mode != "off":
            client_context(tls, f"destinations.{name}.tls")
        ca = getattr(dest, "ca", None)  # a DICOMweb destination's https CA bundle
        if isinstance(ca, Path):
            _ca_bundle(ca, f"destinations.{name}.ca")
    for title, known in config.known_aes.items():  # relayed C-MOVE and commitment results
        if known.tls.mode != "off":
            client_context(known.tls, f"known_aes.{title}.tls")
    console = config.console
    if console.tls_cert is not None and console.tls_key is not None:
        server_context(ListenerTLS(mode="tls", cert=console.tls_cert, key=console.tls_key,
                                   key_password_file=console.tls_key_password_file), "console")
    syslog = config.audit.syslog
    if syslog is not None and syslog.transport == "tls":
        if syslog.ca is not None:
            _ca_bundle(syslog.ca, "audit.syslog.ca")
        if syslog.cert is not None:
            try:
                ssl.create_default_context().load_cert_chain(
                    str(syslog.cert), str(syslog.key) if syslog.key is not None else None)
            except (OSError, ssl.SSLError) as exc:
                raise TLSConfigError(f"audit.syslog.cert: {syslog.cert} and its key cannot be "
                                     f"used: {exc}") from None


def _ca_bundle(path: Path, key: str) -> None:
    """A CA bundle the router will verify peers against: readable, and PEM certificates."""
    _readable(path, key)
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"{key}: {path} holds no PEM certificate: {exc}") from None


# Bounded metric labels for handshake failures, from OpenSSL's reason codes. The router's own
# verification of a peer's certificate fails with CERTIFICATE_VERIFY_FAILED (failure_reason
# reads its verify_message); the *_ALERT_* codes are alerts the peer sent.
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_client_certificate",
    "WRONG_VERSION_NUMBER": "not_tls",
    "HTTP_REQUEST": "not_tls",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "handshake_failure",
}
# Alerts by which the peer refused the router's certificate, with the alert's name: not the
# peer's certificate at fault, whatever the alert says about "expired" or "unknown CA".
PEER_REFUSED = "peer_refused_our_certificate"
_PEER_REFUSALS = {
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate_expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate_revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_unknown",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported_certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
}


_NO_TRUSTED_ISSUER = ("unable to get local issuer", "unable to get issuer certificate",
                      "unable to verify the first certificate", "self-signed", "self signed")


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | ssl.SSLZeroReturnError) or "timed out" in str(exc):
        return "handshake_timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = (exc.verify_message or "").lower()
        if "expired" in message:
            return "certificate_expired"
        if "revoked" in message:
            return "certificate_revoked"
        if "crl" in message:
            return "crl_problem"  # no CRL for the issuer, or an expired one
        if "hostname mismatch" in message or "ip address mismatch" in message:
            return "hostname_mismatch"  # a good certificate, for another name
        # The chain does not reach a CA in the trust store: "unable to get issuer
        # certificate" when `ca` holds an intermediate of it but not its root.
        if any(words in message for words in _NO_TRUSTED_ISSUER):
            return "unknown_ca"
        return "bad_certificate"
    if isinstance(exc, ssl.SSLError):
        if exc.reason in _PEER_REFUSALS:
            return PEER_REFUSED
        return _REASONS.get(exc.reason or "", "handshake_failed")
    return "connection_lost"


def failure_text(exc: BaseException) -> str:
    """failure_reason in words for the log: whose certificate was refused, and why."""
    reason = failure_reason(exc)
    if reason == PEER_REFUSED:
        alert = _PEER_REFUSALS[getattr(exc, "reason", "")]
        return f"the peer refused the router's certificate ({alert})"
    return reason


def peer_identities(cert: dict[str, Any] | None) -> list[str]:
    """Subject common names and DNS/URI subject alternative names of a verified peer."""
    if not cert:
        return []
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    return names


def subject_text(cert: dict[str, Any] | None) -> str | None:
    """The peer's subject as RFC 4514 text (router/core/dn_text.py)."""
    if not cert:
        return None
    return rfc4514(cert.get("subject", ()))
