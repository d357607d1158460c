"""`spool:`, `queue:`, `metrics:` and `api:`: the router's own resources and ports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from router.core.bounds import GIB, PIB, between
from router.core.config.base import Strict
from router.core.disk_space import MIN_FREE_INODES
from router.core.durations import DAY, Seconds, at_most
from router.core.hosts import Host


class SpoolConfig(Strict):
    path: Path = Path("spool")
    # Disk watermark: below either, C-STOREs get 0xA700 and associations are rejected
    # ("temporary congestion") until deliveries free space again.
    min_free_bytes: Annotated[int, between(0, PIB)] = GIB  # at most 1 PiB
    min_free_percent: float = Field(5.0, ge=0, le=100)
    # How long the duplicate ledger remembers a delivery (destination, SOP Instance UID,
    # digest): the same bytes again within this window are not sent twice.
    duplicate_window: Annotated[float, at_most(30 * DAY, "seconds", "30 days")] = Field(
        24 * 3600.0, ge=0)
    # The de-identification key every cell shares (a mounted Secret: README
    # "De-identification"); unset, each spool makes its own deid-secret.key (one cell only).
    deidentify_key_file: Path | None = None
    # Where the state a later association may need lives (commitments/, n-instances/):
    # with several cells behind a load balancer, a volume they all mount, since the PACS's
    # N-EVENT-REPORT or a modality's N-SET may reach another cell (docs/scale-out.md).
    shared_state_dir: Path | None = None

    def state_folder(self, name: str) -> Path:
        """The folder of one kind of shared state: under shared_state_dir when set, else
        in the spool."""
        return (self.shared_state_dir or self.path).resolve() / name

    def watermark_bytes(self, total: int) -> float:
        """The free bytes the spool must keep on a disk of `total` bytes: the larger of the
        two watermarks (the acceptor's admission and the recycled files' pool read it)."""
        return max(self.min_free_bytes, total * self.min_free_percent / 100)

    def watermark_inodes(self, total: int) -> float:
        """The free inodes the spool must keep on a filesystem of `total` inodes (0: one
        without an inode limit, such as btrfs): every C-STORE takes some, and running out
        refuses commits as a full disk does, with bytes free."""
        if total <= 0:
            return 0
        return max(MIN_FREE_INODES, total * self.min_free_percent / 100)


class QueueConfig(Strict):
    """Bounds of the broker's queue: past either, senders get 0xA700 and retry later."""

    # Each queued job is held in the broker's memory (about a kilobyte): 10 million at most.
    max_jobs: Annotated[int, between(1, 10_000_000)] = 100_000
    max_bytes: Annotated[int, between(1, PIB)] = 50 * GIB
    # Seconds a destination's short queue waits after its first job, so that what arrives
    # meanwhile goes as one run (router/broker/gathering.py); 0 sends every job at once.
    linger: float = Field(0.01, ge=0, le=1.0)


class MetricsConfig(Strict):
    enabled: bool = True
    host: Host = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535)
    # A request must arrive whole within this; connections served at once, at most, and
    # from one address (so that one client cannot take every slot from the probes).
    request_timeout: Seconds = Field(10.0, gt=0)
    max_connections: Annotated[int, between(1, 1024)] = 32  # one thread each
    max_connections_per_source: Annotated[int, between(1, 1024)] = 8


class ApiConfig(Strict):
    """The operator API (/api/..., router/service/control_api.py) on the metrics port."""

    # A file holding a bearer token (Authorization: Bearer <token>) that /api/ requests
    # must carry. Unset: only clients on the loopback address may use the API.
    token_file: Path | None = None
