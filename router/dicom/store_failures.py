"""How an outbound association or a C-STORE on it failed, as the C-STORE sender
(store_sender.py) classifies it: for its retries, back-off and the dead letters' reasons."""

from __future__ import annotations

import ssl
from typing import Literal

from router.dicom.engine import AssociateRJ

FailureKind = Literal["connection", "tls", "rejected", "aborted", "closed", "no_answer",
                      "no_context"]
# Why a C-STORE got no response: the peer aborted, closed or reset the association under it
# (`aborted`), said nothing within dimse_timeout (`timeout`), answered something else than
# its response (`protocol`), or advertised a maximum PDU length too small to carry it
# (`max_pdu`).
StoreFailureKind = Literal["aborted", "timeout", "protocol", "max_pdu"]


class AssociationFailed(Exception):
    """The association could not be established. `connected`: the TCP (and TLS) connection
    was made, so the peer is up; `rejection`/`abort`: what it answered; `waited`: seconds
    spent waiting for the answer; `unsupported`: for `no_context`, the SOP classes it
    answered "abstract syntax not supported" (result 3) for."""

    def __init__(self, kind: FailureKind, message: str, *, connected: bool,
                 rejection: AssociateRJ | None = None, abort: tuple[int, int] | None = None,
                 waited: float = 0.0, tls_error: ssl.SSLError | None = None,
                 unsupported: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.kind = kind
        self.unsupported = unsupported
        self.connected = connected
        self.rejection = rejection
        self.abort = abort
        self.waited = waited
        self.tls_error = tls_error


class StoreFailed(Exception):
    """A C-STORE got no response: the association is gone; `kind` says how it ended."""

    def __init__(self, kind: StoreFailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
