"""What every connection of one acceptor process reads: its settings and shared services."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from router.acceptor.association_events import AssociationEvents
from router.acceptor.negotiation import AcceptorOffer
from router.acceptor.store_handler import StoreHandler
from router.acceptor.tls_listener import TLSListener
from router.core.recycling import FileRecycler
from router.relay.server import RelayServer


@dataclass(frozen=True)
class ConnectionSettings:
    """What a connection reads once, at its start (a reload replaces the whole value)."""

    offer: AcceptorOffer
    request_timeout: float  # from connect until the whole A-ASSOCIATE-RQ has arrived
    network_timeout: float  # longest silence once associated
    max_dataset_bytes: int | None
    max_message_bytes: int  # a relayed request's dataset, held in memory
    response_timeout: float  # a C-GET sub-operation's C-STORE-RSP from the requester
    incoming: Path  # the spool's incoming/ folder: received files are renamed into jobs/
    recycler: FileRecycler | None = None  # settled jobs' files to write over (spool recycle/)


@dataclass
class AcceptorServices:
    """Shared by every connection of one acceptor process."""

    settings: ConnectionSettings
    events: AssociationEvents
    store: StoreHandler
    tls: TLSListener | None
    relay: RelayServer | None
