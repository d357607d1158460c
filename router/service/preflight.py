"""What the supervisor checks of a config before it acts on it (at start, and for a reload
what may change while the router runs): ports it can bind, TLS material that loads, and
what an operator should be told of. Errors are RouterError with a message naming the key."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from router.core.burned_in import burned_in_defaults
from router.core.config import RouterConfig
from router.core.durable_files import fsync_path, write_atomically
from router.core.errors import RouterError
from router.core.rules import per_cell_completions, shared_completions
from router.core.tls import check_contexts
from router.core.tls_dates import expiry_warnings
from router.relay.move_owner import CELL_FILE, make_cell_id
from router.service.ports import check_bindable

log = logging.getLogger(__name__)


def check_ports(config: RouterConfig) -> None:
    """Bind the DICOM and the HTTP ports once before spawning anything."""
    listen, http = config.listen, config.metrics
    check_bindable(listen.host, listen.port, "DICOM", "listen.host/listen.port")
    if http.enabled and http.port:
        check_bindable(http.host, http.port, "metrics and health (HTTP)",
                       "metrics.host/metrics.port")


def check_tls(config: RouterConfig) -> None:
    """Load every TLS context once: a wrong password or a missing file is a clear error at
    start (or a refused reload), not a crash loop of a child process."""
    check_contexts(config)
    for note in expiry_warnings(config):
        log.warning("%s", note)


# The state a later association may need (spool.shared_state_dir): storage commitments,
# the upstream that took each N-CREATE.
SHARED_STATE = ("commitments", "n-instances")
# The relayed C-MOVEs the cells share, and the instances one hands to another's move: never
# brought from the spool (below), created only when shared (in the spool, moves/ is made by
# the acceptors, and no instance is handed over).
SHARED_MOVES = ("moves", "move-instances")


def check_shared_state(config: RouterConfig) -> None:
    """Create the shared state's folders once, so that a volume not mounted or not writable
    is a clear error at start, not a child process's traceback. A cell that starts sharing
    brings its commitments and MPPS choices along, not its spool's moves/: those moves ended
    with the run that relayed them (their requesters' associations with it), and their
    entries name owners by tags no other cell can judge (router/relay/move_owner.py)."""
    for name in SHARED_STATE + (SHARED_MOVES if config.spool.shared_state_dir else ()):
        folder = config.spool.state_folder(name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe-{os.getpid()}-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            key = "spool.shared_state_dir" if config.spool.shared_state_dir else "spool.path"
            raise RouterError(f"{key}: cannot write {folder}: {exc.strerror}") from None
        own = config.spool.path.resolve() / name
        if (config.spool.shared_state_dir and name in SHARED_STATE and own != folder
                and own.is_dir()):
            _move_into_shared(own, folder)


def check_cell_id(spool_root: Path) -> None:
    """The id by which the other cells know this one's relayed C-MOVEs, made (or a damaged
    one replaced) here, once, before the acceptors read it (router/relay/move_owner.py)."""
    try:
        make_cell_id(spool_root)
    except OSError as exc:
        raise RouterError(f"spool.path {spool_root}: cannot write its {CELL_FILE}: "
                          f"{exc.strerror or exc}") from None


def _move_into_shared(own: Path, shared: Path) -> None:
    """A cell that starts sharing its state (spool.shared_state_dir newly set) brings what
    its spool holds: a commitment pending there would otherwise have its result refused as
    unknown, and an N-SET sent to another RIS than its N-CREATE's. Each file is written
    durably in the shared folder before the spool's copy goes; a name the shared folder has
    already is another cell's (or this one's, from an earlier start): kept, and the spool's
    left where it is."""
    moved = kept = 0
    for source in sorted(own.iterdir()):
        if source.name.startswith(".") or not source.is_file():
            continue  # a temporary file a crash left: it was never a record
        target = shared / source.name
        if target.exists():
            kept += 1
            continue
        try:
            write_atomically(target, source.read_bytes())
            fsync_path(shared, directory=True)
            source.unlink()
        except OSError as exc:
            raise RouterError(f"spool.shared_state_dir: cannot move {source} to {shared}: "
                              f"{exc.strerror}") from None
        moved += 1
    if moved or kept:
        log.info("moved %d record(s) from %s to spool.shared_state_dir %s%s", moved, own,
                 shared, f"; {kept} left in the spool, the shared folder has records of "
                 "those names" if kept else "")


def warn_burned_in(config: RouterConfig, before: RouterConfig | None = None) -> None:
    """Say at start (and after a reload, what it made new) which de-identifications refuse
    burned-in instances by default: dead letters were an upgrade's first sign."""
    known = set(burned_in_defaults(before)) if before is not None else set()
    for note in burned_in_defaults(config):
        if note not in known:
            log.warning("%s", note)


def warn_shared_completions(config: RouterConfig) -> None:
    """Say at start and at each reload which destination two completion rules hold: only
    the first one's `complete` applies there, which nothing else shows; and that a cell
    completes only its own part of a study (per_cell_completions)."""
    for note in shared_completions(config.rules):
        log.warning("%s", note)
    shared_state = config.spool.shared_state_dir is not None
    for note in per_cell_completions(config.rules, shared_state):
        log.warning("%s", note)


def version() -> str:
    """The installed dicom-router's version ("unknown" when run from a bare tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("dicom-router")
    except PackageNotFoundError:
        return "unknown"
