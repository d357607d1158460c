"""How the supervisor's children start and restart: the entry every spawned process runs,
the modules each runs without, and the back-off of one that keeps dying.

Kept apart from the supervisor so that a child, which imports this module to run
`run_child`, loads only this and its own room (not the HTTP endpoint, the console or the
audit trail the supervisor serves)."""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from router.core.config import DicomWebDestination as DicomWebConfig
from router.core.config import RouterConfig
from router.core.spool_lock import Tenancy, join_spool
from router.service.ports import EXIT_CANNOT_BIND, is_bind_failure

# A process that dies faster than this after its start is crash-looping: back off.
MIN_UPTIME_SECONDS = 5.0
MAX_RESTART_DELAY = 30.0

# pydicom imports its pixel-data handlers when it is imported, and they load numpy, GDCM and
# Pillow (about 40 MB) if installed. The acceptor never touches pixel data, the workers only
# in their codec process: they run with them hidden (an import of one raises ImportError,
# which pydicom takes as "not installed").
PIXEL_CODECS = ("numpy", "gdcm", "PIL")

_SPOOL_SHARE: int | None = None  # this child's shared lock on <spool>/children.lock


def worker_hidden_modules(config: RouterConfig) -> tuple[str, ...]:
    """What a worker runs without: the pixel codecs, unless a DICOMweb destination needs them
    (dicomweb_client imports numpy and Pillow)."""
    if any(isinstance(spec, DicomWebConfig) for spec in config.destinations.values()):
        return ()
    return PIXEL_CODECS


def run_child(entry: str, without: tuple[str, ...], tenancy: Tenancy, *args: Any) -> None:
    """Every spawned process starts here and imports its own module ("module:function"),
    with the modules named in `without` made unimportable.

    The supervisor itself then never imports pynetdicom or pydicom (tens of MB per process);
    the broker does not either (tests/integration/test_process_imports.py checks both).
    """
    # Until the child's own handler is in place, a SIGHUP (a config reload) must not kill it.
    # The supervisor spawned us with SIGHUP blocked (Supervisor._start): ignoring it drops
    # one that came meanwhile (the supervisor reloads only once every child runs).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    # Held until the process ends: a new supervisor waits for it (router/core/spool_lock.py).
    global _SPOOL_SHARE
    _SPOOL_SHARE = join_spool(tenancy)
    if _SPOOL_SHARE is None:
        logging.getLogger(entry.split(":")[0]).error(
            "the supervisor that started this process is gone; not starting")
        return
    for name in without:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    module, function = entry.split(":")
    try:
        getattr(importlib.import_module(module), function)(*args)
    except OSError as exc:
        if not is_bind_failure(exc):
            raise
        # Restarting would fail the same way: the supervisor stops the router (EXIT_CANNOT_BIND).
        logging.getLogger(module).error("cannot bind a listening socket: %s", exc)
        sys.exit(EXIT_CANNOT_BIND)


@dataclass
class Child:
    name: str
    entry: str  # "module:function", run in the child by run_child
    args: tuple[Any, ...]
    without: tuple[str, ...] = ()  # modules the child must not load (run_child)
    process: BaseProcess | None = None
    started_at: float = 0.0
    restart_delay: float = 0.0
    not_before: float = 0.0
    restarts: int = 0
    # A SIGHUP was sent while the process may still have been starting and ignoring it
    # (run_child): the supervisor sends it again once the process reports.
    hup_owed: bool = False

    @property
    def is_acceptor(self) -> bool:
        return self.name.startswith("acceptor-")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def started(self, process: BaseProcess, now: float) -> None:
        self.process, self.started_at = process, now
        self.hup_owed = False  # it starts with the config and TLS files in force now

    def died(self, now: float) -> None:
        """Forget the dead process; one that lived less than MIN_UPTIME_SECONDS restarts
        after a delay that doubles each time (up to MAX_RESTART_DELAY), others at once."""
        self.process = None
        quick = now - self.started_at < MIN_UPTIME_SECONDS
        self.restart_delay = (min(MAX_RESTART_DELAY, max(1.0, self.restart_delay * 2))
                              if quick else 0.0)
        self.not_before = now + self.restart_delay
        self.restarts += 1

    def could_not_start(self, now: float) -> None:
        """The spawn itself failed (EAGAIN under a pids limit, ENOMEM): try again after the
        crash-loop delay, which doubles each time as for a child that died at once."""
        self.restart_delay = min(MAX_RESTART_DELAY, max(1.0, self.restart_delay * 2))
        self.not_before = now + self.restart_delay
