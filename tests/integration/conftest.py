"""Fixtures for integration tests: the real router, real DCMTK peers, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dcmtk import StoreSCP
from tests.integration.router_process import RouterProcess
from tests.study_set import StudySet, make_study_set

RouterFactory = Callable[[dict[str, Any]], RouterProcess]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs with the given options (`size=64k`, `nr_inodes=40`) for a full-disk
    test, unmounted at the end; needs root (make test and CI run as root)."""
    mounted: list[Path] = []
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a small tmpfs needs root, and CI must run this test as root")
        pytest.skip("mounting a small tmpfs needs root (make test runs as root, as CI does)")

    def mount(options: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"cannot mount a small tmpfs: {done.stderr}"
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(point)], check=False, timeout=30)


def fill_disk(path: Path) -> None:
    """Write `path` until its filesystem has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[RouterFactory]:
    """Start `dicom-router run` with a config (spool, ports and metrics filled in)."""
    started: list[RouterProcess] = []

    def start(config: dict[str, Any]) -> RouterProcess:
        workdir = tmp_path / f"router{len(started)}"
        workdir.mkdir()
        router = RouterProcess(workdir, config)
        started.append(router)
        return router.start()

    yield start
    for router in started:
        router.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Start DCMTK storescp peers by AE title; each stores under tmp_path/<AE>.

    Without --fork by default: storescp then serves one association at a time, as many PACS,
    workstations and gateways do, which is what routing and delivery must work with.
    `fork=True` (one process per association) is for tests of parallel throughput.
    """
    peers: list[StoreSCP] = []

    def start(ae_title: str, fork: bool = False) -> StoreSCP:
        scp = StoreSCP(tmp_path / ae_title, ae_title, extra_args=["--fork"] if fork else [])
        scp.__enter__()
        peers.append(scp)
        return scp

    yield start
    for scp in peers:
        scp.stop()


@pytest.fixture(scope="module")
def study_set(tmp_path_factory: pytest.TempPathFactory) -> StudySet:
    """A small patient/study/series hierarchy (tests/study_set.py), one per test module."""
    return make_study_set(tmp_path_factory.mktemp("studies"))


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """The C-MOVE destination of the relay tests: a storescp as a viewer workstation, AE
    VIEWER. --fork: an archive may open a second association while a move is finishing."""
    with StoreSCP(tmp_path_factory.mktemp("viewer"), "VIEWER", extra_args=["--fork"]) as scp:
        yield scp


def dicom_destination(scp: StoreSCP) -> dict[str, Any]:
    return {"type": "dicom", "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port}
