"""One inbound association as the acceptor's rules see it.

The connection (router/acceptor/connection.py) fills an `AssociationSession`; access rules,
counts, audit and the store handler read and settle it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from router.audit.trail import TransferTally
from router.core.rules import AssociationFacts
from router.core.status_snapshots import AssociationProgress


@dataclass
class AssociationSession:
    # Facts of the A-ASSOCIATE-RQ and the connection (the AE titles as the requestor sent them).
    calling_ae: str = ""
    called_ae: str = ""
    address: str = ""
    port: int = 0
    own_ae: str = ""  # the router's AE title
    certificate: dict[str, Any] | None = None  # the peer's TLS certificate, if any
    certificate_der: bytes | None = None  # ... as sent, for its fingerprint
    user_identity: bool = False  # the request carried a user identity item
    # The router's bookkeeping, settled once when the association ends.
    # Holds one of listen.max_associations, counted under this source address.
    slot: bytes | None = None
    counted: bool = False  # counted in the active associations (per calling AE)
    tally: TransferTally | None = None  # audit: instances per study
    progress: AssociationProgress | None = None  # live status: this association's row
    # What the receiver saw while the C-STORE in progress arrived:
    dataset_truncated: bool = False  # past listen.max_dataset_bytes: not kept
    disk_full: bool = False  # the spool filled up while it was written

    @cached_property
    def facts(self) -> AssociationFacts:
        """What the routing rules see of the association (once per association, not per
        C-STORE: the request's facts do not change)."""
        return AssociationFacts(self.calling_ae, self.called_ae, self.address)


@dataclass(frozen=True)
class ReceivedStore:
    """A C-STORE whose dataset has arrived whole, in `path` (a Part 10 file in incoming/)."""

    session: AssociationSession
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    priority: int = 0  # the request's Priority (0 medium, 1 high, 2 low)
    move_originator_ae: str | None = None
    move_originator_message_id: int | None = None
    synced: bool = False  # the file's bytes are durable already (the receiver synced them)
    size: int | None = None  # the file's length, when the receiver knows it (else stat)
    head: bytes = b""  # the dataset's first bytes (router/dicom/dataset_identity.py)
