"""The spool's folders and file names, under its root:
  incoming/              chunked-receive temp files (TMPDIR of the acceptor); wiped at start,
                         because nothing in it was acknowledged to a sender
  jobs/<id>.dcm          the instance exactly as received (Part 10, file meta added); its
                         presence is what makes a job real
  journal/*.log          the headers of the jobs the acceptor committed, appended and synced
                         in groups (router/core/journal.py); the crash argument is in the
                         README, "The spool"
  jobs/<id>.json         a job's header once it no longer comes from the journal: rewritten
                         (drain-to, fallback), replayed, or compacted at start; wins over the
                         journal's record
  jobs/<id>.<dest>.done  destination <dest> has it (only for jobs with several destinations)
  recycle/               settled jobs' instance files, written over by new C-STOREs instead of
                         deleted and created again (router/core/recycling.py); no job is here
  dead-letters/          <id>.<dest>.json records with the reason, <id>.dcm hard links
  control/state.json     destinations an operator paused (router/broker/control.py)
  relay/                 instances of a retrieve in progress (C-GET, relayed C-MOVE) on their
                         way to the requester (named after the relaying acceptor), and
                         workers' copies of jobs being morphed, de-identified or transcoded
                         (<pid>-<job>.<random>.dcm); the broker deletes a dead process's
                         (owned_names.py); never acknowledged as stored, wiped at start
  moves/<message id>     relayed C-MOVEs in progress, which acceptor relays each one
                         (router/relay/move_registry.py); under spool.shared_state_dir
                         when set, shared by the cells
  cell-id                this cell's id, for the cells that share moves/ (move_owner.py)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Self

from router.core.errors import RouterError
from router.core.recycling import FileRecycler


class SpoolLayout:
    """Where each kind of file of a spool lives; Spool (router/core/spool.py) adds what
    is done with them."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.incoming = self.root / "incoming"
        self.jobs = self.root / "jobs"
        self._jobs_dir = str(self.jobs)
        self.dead_letters = self.root / "dead-letters"
        self.unconfirmed: list[str] = []  # kept as dead letters by remove_orphans()
        self.replay = self.root / "replay"
        self.relay = self.root / "relay"
        self.moves = self.root / "moves"
        self.journal = self.root / "journal"
        self.ledger_path = self.root / "ledger.sqlite"
        self.recycled = self.root / "recycle"
        self.recycler = FileRecycler(self.recycled)

    def create(self) -> Self:
        # A new spool is the router's user's alone (0700): it holds every received instance
        # and the de-identification key and map. An existing one (a mounted volume) is kept.
        with contextlib.suppress(OSError):  # it exists; or cannot be made: said just below
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self.root.mkdir(mode=0o700)
        for folder in (self.incoming, self.jobs, self.journal, self.dead_letters, self.replay,
                       self.relay, self.recycled):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file there, no permission: say which key to fix
                raise RouterError(f"spool.path {self.root}: cannot create {folder}: "
                                  f"{exc.strerror}") from None
        return self

    def instance_path(self, job_id: str) -> Path:
        return self.jobs / f"{job_id}.dcm"

    def _header_path(self, job_id: str) -> Path:
        return self.jobs / f"{job_id}.json"

    def _marker_path(self, job_id: str, destination: str) -> Path:
        return self.jobs / f"{job_id}.{destination}.done"
