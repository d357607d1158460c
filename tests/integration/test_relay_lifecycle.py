"""Relayed requests when a router process on their path stops: an acceptor killed mid C-GET,
a worker restarted by a config reload mid C-FIND or C-GET, a C-CANCEL for a request still
queued in the worker. Every relayed request ends: upstream (C-CANCEL, or an abort when the
upstream ignores it), in the worker (its relay thread is free again) and at its requester
(a proper final status: 0xA700 C-FIND, 0xA701 C-GET/C-MOVE, 0xFE00 when it cancelled)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.dcmtk import LOCALHOST
from tests.integration.router_process import RouterProcess, wait_for
from tests.integration.test_relay_qr import (
    FindArchive,
    SlowGetArchive,
    _find_association,
    _get_association,
    _study_query,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FIND = StudyRootQueryRetrieveInformationModelFind
GET = StudyRootQueryRetrieveInformationModelGet


def _router(tmp_path: Path, port: int, ae_title: str, **extra: Any) -> RouterProcess:
    return RouterProcess(tmp_path / "r", {
        "workers": 1, "worker_threads": 1, **extra,
        "destinations": {"up": {"type": "dicom", "ae_title": ae_title, "host": LOCALHOST,
                                "port": port}},
        "rules": [{"name": "qr", "query": ["up"]}]}).start()


def _reload_destinations(router: RouterProcess) -> None:
    """SIGHUP with a destinations change: the supervisor restarts the worker."""
    config = yaml.safe_load(router.config_path.read_text())
    config["destinations"]["up"]["dimse_timeout"] = 59
    router.config_path.write_text(yaml.safe_dump(config))
    assert router.process is not None
    os.kill(router.process.pid, signal.SIGHUP)


def _statuses(responses: Iterator[tuple[Dataset, Any]], then: Any = None,
              after: int = 0) -> list[int]:
    """The statuses of a C-FIND/C-GET; `then()` once `after` of them came."""
    statuses: list[int] = []
    for status, _ in responses:
        statuses.append(int(status.Status) if status else -1)
        if then is not None and len(statuses) == after:
            then()
    return statuses


def test_an_acceptor_killed_mid_c_get_has_it_cancelled_upstream_and_frees_the_worker(
        tmp_path: Path) -> None:
    """kill -9 of the acceptor while its requester holds a C-GET sub-operation (the worker's
    relay window is full): the broker sees the acceptor gone and has the worker cancel the
    request; the upstream gets C-CANCEL, and the only relay thread serves the next C-GET.
    Before, that thread waited for acknowledgements forever."""
    archive = SlowGetArchive(tmp_path / "archive")
    router = _router(tmp_path, archive.port, "SLOWGET", request_timeout=30)
    held = threading.Event()
    release = threading.Event()

    def hold(event: Any) -> int:
        held.set()
        release.wait(60)
        return 0x0000

    first = _get_association(router.port, hold)
    try:
        assert first.is_established
        getter = threading.Thread(target=lambda: list(first.send_c_get(_study_query("1.2"),
                                                                      GET)), daemon=True)
        getter.start()
        assert held.wait(30), router.log()[-3000:]
        acceptor = router.child_pid("acceptor-1")
        os.kill(acceptor, signal.SIGKILL)
        assert archive.cancelled.wait(30), router.log()[-3000:]
        assert archive.sent < SlowGetArchive.INSTANCES
        assert "its acceptor stopped; cancelling it upstream" in router.log()
        assert wait_for(lambda: router.child_pid("acceptor-1") != acceptor, timeout=30)
        assert wait_for(lambda: not list((router.spool / "incoming").glob("tmp*")),
                        timeout=15), list((router.spool / "incoming").iterdir())

        archive.cancelled.clear()
        archive.sent = 0
        received: list[str] = []
        second = _get_association(router.port, lambda event: received.append("x") or 0x0000)
        assert second.is_established
        statuses = _statuses(second.send_c_get(_study_query("1.2"), GET))
        second.release()
        assert statuses[-1] == 0x0000, (statuses[-3:], router.log()[-3000:])
        assert len(received) == SlowGetArchive.INSTANCES
        assert "Traceback" not in router.log()
    finally:
        release.set()
        first.abort()
        router.stop()
        archive.close()


def test_a_reload_cancels_a_relayed_c_find_upstream_and_fails_it_with_0xa700(
        tmp_path: Path) -> None:
    """A reload that restarts the worker mid C-FIND: the worker cancels the query upstream
    and its requester gets 0xA700 (retry). Before, the query ran on upstream to its end."""
    archive = FindArchive(matches=150, ae_title="FINDQR")
    router = _router(tmp_path, archive.port, "FINDQR")
    try:
        assoc = _find_association(router.port, "FINDER")
        statuses = _statuses(assoc.send_c_find(_study_query(), FIND),
                             lambda: _reload_destinations(router), after=3)
        assoc.release()
        assert statuses[-1] == 0xA700, statuses[-3:]
        assert archive.cancelled.wait(15), router.log()[-3000:]
        assert archive.sent < archive.matches
        assert wait_for(lambda: "config reloaded from" in router.log(), timeout=30)
        assert "Traceback" not in router.log()
    finally:
        router.stop()
        archive.close()


def test_a_reload_fails_a_relayed_c_get_with_0xa701(tmp_path: Path) -> None:
    """The same for a C-GET: 0xA701 (Out of resources, PS3.4 C.4.3), not 0xA700, which is
    no C-GET status; the upstream gets C-CANCEL."""
    archive = SlowGetArchive(tmp_path / "archive")
    router = _router(tmp_path, archive.port, "SLOWGET")
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 3:
            _reload_destinations(router)
        return 0x0000

    try:
        assoc = _get_association(router.port, on_store)
        assert assoc.is_established
        statuses = _statuses(assoc.send_c_get(_study_query("1.2"), GET))
        assoc.release()
        assert statuses[-1] == 0xA701, statuses[-3:]
        assert archive.cancelled.wait(15), router.log()[-3000:]
        assert len(received) < SlowGetArchive.INSTANCES
        assert wait_for(lambda: "config reloaded from" in router.log(), timeout=30)
    finally:
        router.stop()
        archive.close()


def test_a_reload_is_not_held_up_by_an_upstream_that_ignores_c_cancel(tmp_path: Path) -> None:
    """The stopping worker cancels the query; the upstream goes on regardless (for a minute):
    the worker aborts the association after a short grace and exits, and the reload
    completes. Before, it waited for the worker up to dimse_timeout + 5 s, then killed it."""
    archive = FindArchive(matches=600, stubborn=True, ae_title="FINDQR")
    router = _router(tmp_path, archive.port, "FINDQR")
    try:
        assoc = _find_association(router.port, "FINDER")
        statuses = _statuses(assoc.send_c_find(_study_query(), FIND),
                             lambda: _reload_destinations(router), after=3)
        assoc.release()
        assert statuses[-1] == 0xA700, statuses[-3:]
        assert archive.cancelled.wait(15)
        assert archive.aborted.wait(15), "the worker never aborted the upstream association"
        assert wait_for(lambda: "config reloaded from" in router.log(), timeout=30), \
            router.log()[-3000:]
        assert "did not stop within" not in router.log()
    finally:
        router.stop()
        archive.close()


def test_a_c_cancel_for_a_queued_request_is_applied_when_it_starts(tmp_path: Path) -> None:
    """The only relay thread is busy with a long C-FIND; a second C-FIND is cancelled while
    it waits in the worker's queue: it ends with 0xFE00 and never reaches the upstream.
    Before, the cancel found no task and was dropped: the query ran in full later."""
    archive = FindArchive(matches=60, ae_title="FINDQR")
    router = _router(tmp_path, archive.port, "FINDQR")
    try:
        long = _find_association(router.port, "LONG")
        started = threading.Event()
        runner = threading.Thread(target=lambda: _statuses(
            long.send_c_find(_study_query(), FIND), started.set, after=1), daemon=True)
        runner.start()
        assert started.wait(30)
        queued = _find_association(router.port, "QUEUED")
        timer = threading.Timer(1.0, lambda: queued.send_c_cancel(5, query_model=FIND))
        timer.start()
        statuses = _statuses(queued.send_c_find(_study_query(), FIND, msg_id=5))
        queued.release()
        assert statuses == [0xFE00], statuses[-3:]
        runner.join(60)
        long.release()
        assert archive.queries == 1
    finally:
        router.stop()
        archive.close()


def test_a_c_cancel_an_upstream_ignores_ends_with_an_abort(tmp_path: Path) -> None:
    """The requester cancels; the upstream goes on regardless (for a minute): the worker
    aborts the upstream association after a short grace, the requester gets 0xFE00 and the
    only relay thread serves the next query. Before, the relay went on to the upstream's end."""
    archive = FindArchive(matches=600, stubborn=True, ae_title="FINDQR")
    router = _router(tmp_path, archive.port, "FINDQR")
    try:
        assoc = _find_association(router.port, "FINDER")
        statuses = _statuses(assoc.send_c_find(_study_query(), FIND, msg_id=3),
                             lambda: assoc.send_c_cancel(3, query_model=FIND), after=3)
        assert statuses[-1] == 0xFE00, statuses[-3:]
        assert archive.cancelled.is_set()
        assert archive.aborted.wait(15), "the worker never aborted the upstream association"
        archive.stubborn, archive.matches = False, 2
        statuses = _statuses(assoc.send_c_find(_study_query(), FIND, msg_id=4))
        assoc.release()
        assert statuses == [0xFF00, 0xFF00, 0x0000], statuses
        assert "Traceback" not in router.log()
    finally:
        router.stop()
        archive.close()
