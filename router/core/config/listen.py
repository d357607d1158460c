"""`listen:` where and how the acceptor takes associations: address, limits, TLS, users; and
the client TLS the router uses towards destinations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from router.core.bounds import GIB, KIB, TIB, between
from router.core.config.base import (
    DEFAULT_MAX_PDU,
    Strict,
    _check_ae_title,
    _check_networks,
    shown,
)
from router.core.durations import Seconds
from router.core.hosts import Host
from router.core.uids import is_valid_uid


class TLSBase(Strict):
    mode: Literal["off", "tls", "mtls"] = "off"
    cert: Path | None = None
    key: Path | None = None
    # Where an encrypted key's password comes from: never the command line, never a prompt.
    key_password_file: Path | None = None
    key_password_env: str | None = None
    key_password_command: list[str] | None = None  # e.g. a vault client; its stdout
    ca: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are always the safe defaults).
    ciphers: str = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM"

    @model_validator(mode="after")
    def _one_password_source(self) -> TLSBase:
        given = [k for k in ("key_password_file", "key_password_env", "key_password_command")
                 if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one key password source, not {' and '.join(given)}")
        if given and self.key is None:
            raise ValueError(f"{given[0]} is set but there is no key")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class ListenerTLS(TLSBase):
    """tls: the router presents `cert`; mtls: clients must present a certificate from `ca`."""

    handshake_timeout: Seconds = Field(10.0, gt=0)
    # PEM file of CRLs from `ca`: a client certificate listed there is refused (mtls).
    # It must hold a current CRL for every CA that issues client certificates; reloaded on
    # SIGHUP with the certificates.
    crl: Path | None = None
    # Certificate identity (subject CN or a DNS/URI SAN) -> calling AE titles it may use.
    # When set, an mTLS client whose identity is not listed, or who calls with another AE
    # title, is rejected ("calling AE title not recognised").
    ae_titles: dict[str, list[str]] = {}

    _bound_ae_titles = field_validator("ae_titles")(
        lambda v: {name: [_check_ae_title(t) for t in titles] for name, titles in v.items()})

    @model_validator(mode="after")
    def _complete(self) -> ListenerTLS:
        if self.mode != "off" and self.cert is None:
            raise ValueError(f"mode {self.mode} needs cert and key")
        if self.mode == "mtls" and self.ca is None:
            raise ValueError("mode mtls needs ca: the CA bundle client certificates must chain to")
        if self.crl is not None and self.mode != "mtls":
            raise ValueError("crl revokes client certificates: needs mode mtls")
        if self.ae_titles and self.mode != "mtls":
            raise ValueError("ae_titles binds client certificates to AE titles: needs mode mtls")
        return self


class ClientTLS(TLSBase):
    """tls: verify the destination against `ca`; mtls: also present the router's cert/key."""

    verify_hostname: bool = True
    # The name to check the destination's certificate against (defaults to its host).
    server_name: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ClientTLS:
        if self.mode != "off" and self.ca is None:
            raise ValueError(f"mode {self.mode} needs ca: the CA bundle to verify the peer with")
        if self.mode == "mtls" and self.cert is None:
            raise ValueError("mode mtls needs cert and key: the router's client certificate")
        return self


class UserConfig(Strict):
    username: str = Field(min_length=1)
    # From `dicom-router hash-passcode`: pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>
    passcode_hash: str = Field(pattern=r"^pbkdf2_sha256\$\d+\$[0-9a-f]+\$[0-9a-f]+$")


MAX_DEFAULT_ACCEPTORS = 4
# Every acceptor offers them on every association: a handful in practice.
MAX_EXTRA_STORAGE_CLASSES = 1000


def _check_sop_class_uid(value: str) -> str:
    if not is_valid_uid(value):
        raise ValueError(f"{shown(value)} is not a SOP class UID (digits and dots, at most "
                         "64 characters, e.g. 1.3.12.2.1107.5.9.1)")
    return value
MAX_CONNECTIONS = 10_000


def default_acceptors(cores: int | None = None) -> int:
    """One acceptor process per two cores, at least one and at most four (README
    "listen.acceptors"): an instance costs CPU in the acceptor, the broker and a worker, so
    more acceptors than half the cores only take CPU from the delivery side."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_ACCEPTORS, cores // 2))


class ListenConfig(Strict):
    host: Host = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    # Acceptor processes sharing host:port (SO_REUSEPORT): the kernel spreads new
    # connections over them. The listen limits below hold for all of them together.
    acceptors: Annotated[int, between(1, 64)] = Field(default_factory=default_acceptors)
    max_pdu: int = Field(DEFAULT_MAX_PDU, ge=4096, le=4_194_304)
    # Reject associations whose called AE is not the router's own AE title.
    require_called_ae: bool = False
    # The shared counts preallocate 4 slots per association and per pending connection, in
    # every acceptor's column (router/core/acceptor_seat.py): 10,000 of each at most.
    max_associations: Annotated[int, between(1, MAX_CONNECTIONS)] = 64
    max_associations_per_calling_ae: Annotated[int, between(1, MAX_CONNECTIONS)] | None = None
    # Open associations from one source address; unset: half of max_associations, so that
    # one address (whatever AE titles it claims) never takes every association. Behind a TCP
    # proxy or SNAT every sender has the proxy's address: raise it to max_associations.
    max_associations_per_source: Annotated[int, between(1, MAX_CONNECTIONS)] | None = None
    # A C-STORE dataset larger than this is refused (0xC003); the disk watermark still applies.
    max_dataset_bytes: Annotated[int, between(1, TIB)] | None = None
    # The largest dataset of any other request (C-FIND identifier, N-service dataset), which
    # is held in memory until complete: past it the association is aborted.
    max_message_bytes: Annotated[int, between(64 * KIB, GIB)] = 8 * 1024 * 1024
    # Allowlists; unset means anyone. Rejections use the reason PS3.8 defines for each.
    allowed_calling_ae: list[str] | None = None
    allowed_called_ae: list[str] | None = None
    allowed_sources: list[str] | None = None  # CIDR networks
    # Storage SOP classes accepted besides the standard ones pynetdicom knows: a vendor's
    # private ones (Siemens CSA Non-Image Storage 1.3.12.2.1107.5.9.1 from its MR scanners)
    # or standard ones newer than that list. Applies to new associations on reload.
    extra_storage_classes: list[str] = Field([], max_length=MAX_EXTRA_STORAGE_CLASSES)
    tls: ListenerTLS = ListenerTLS()
    # User identity negotiation (username, or username and passcode).
    users: list[UserConfig] = []
    require_user_identity: bool = False

    _networks = field_validator("allowed_sources", mode="before")(_check_networks)
    _storage_uids = field_validator("extra_storage_classes")(
        lambda v: [_check_sop_class_uid(uid) for uid in v])
    # A peer's title is compared without its padding; a title no peer may send (control
    # characters, backslash) would never match, so it is refused here instead.
    _ae_lists = field_validator("allowed_calling_ae", "allowed_called_ae")(
        lambda v: None if v is None else [_check_ae_title(t) for t in v])

    @property
    def associations_per_source(self) -> int:
        if self.max_associations_per_source is not None:
            return self.max_associations_per_source
        return max(1, self.max_associations // 2)

    @model_validator(mode="after")
    def _identity_needs_users(self) -> ListenConfig:
        if self.require_user_identity and not self.users:
            raise ValueError("require_user_identity needs at least one entry in users")
        return self
    # How long the acceptor waits for the broker to take a job before answering 0xA700.
    submit_timeout: Seconds = Field(10.0, gt=0)
    acse_timeout: Seconds = Field(30.0, gt=0)
    dimse_timeout: Seconds = Field(60.0, gt=0)
    network_timeout: Seconds = Field(60.0, gt=0)
    # The ARTIM timer's job: a connection must deliver its whole A-ASSOCIATE-RQ this soon
    # after connecting (capped by acse_timeout), or it is closed.
    association_request_timeout: Seconds = Field(5.0, gt=0)
    # Connections that have not delivered their A-ASSOCIATE-RQ yet, per source address and
    # in all; more are closed at accept. They do not count in max_associations.
    max_pending_per_source: Annotated[int, between(1, MAX_CONNECTIONS)] = 32
    max_pending: Annotated[int, between(1, MAX_CONNECTIONS)] = 256
    # The listen() backlog: bursts of connects wait in it (the kernel caps it at somaxconn).
    backlog: Annotated[int, between(1, 65535)] = 128
