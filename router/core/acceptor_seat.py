"""What the supervisor hands each acceptor process: its number, the listening socket it
serves (one of several on the same port, SO_REUSEPORT), the shared counts behind the
`listen:` limits and the integer through which it reports its state for /readyz."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router.core.config import ListenConfig
from router.core.shared_counts import SharedCounts

# Room for keys (sources, calling AE titles) beyond the limits: a reload may raise them.
MIN_KEY_SLOTS = 4096


class SharedInt(Protocol):
    value: int


@dataclass
class SharedLimits:
    """Counted over every acceptor: connections still sending their association request (by
    source), associations past it (by source), and open associations by calling AE."""

    pending: SharedCounts
    associations: SharedCounts
    calling_ae: SharedCounts

    @classmethod
    def create(cls, listen: ListenConfig, acceptors: int, folder: Path) -> SharedLimits:
        pending = max(MIN_KEY_SLOTS, 4 * listen.max_pending)
        associations = max(MIN_KEY_SLOTS, 4 * listen.max_associations)
        return cls(SharedCounts(pending, acceptors, folder / "pending.lock"),
                   SharedCounts(associations, acceptors, folder / "associations.lock"),
                   SharedCounts(associations, acceptors, folder / "calling_ae.lock"))

    def forget(self, column: int) -> None:
        """A dead acceptor's connections are gone: take them out of every count."""
        for counts in (self.pending, self.associations, self.calling_ae):
            counts.clear_column(column)


@dataclass
class AcceptorSeat:
    index: int  # 1..N
    state: SharedInt  # router.acceptor.admission.AcceptorState codes
    listener: socket.socket  # bound and listening; the supervisor keeps a copy
    limits: SharedLimits

    @property
    def name(self) -> str:
        return f"acceptor-{self.index}"

    @property
    def column(self) -> int:
        return self.index - 1
