"""Where the processes of one running router find each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Runtime:
    directory: Path  # private temp folder of this run: IPC sockets and metrics files

    @property
    def frontend(self) -> str:
        """Acceptors submit jobs here."""
        return f"ipc://{self.directory / 'submit.ipc'}"

    @property
    def backend(self) -> str:
        """Workers take deliveries here."""
        return f"ipc://{self.directory / 'deliver.ipc'}"

    @property
    def metrics_dir(self) -> Path:
        return self.directory / "metrics"

    @property
    def status_dir(self) -> Path:
        """Live snapshots of the acceptor and broker (router/core/status_snapshots.py)."""
        return self.directory / "status"
