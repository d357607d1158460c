"""A broker start with jobs on the spool whose destination was removed from the config: they
become `unknown_destination` dead letters at once, and the broker's log says so, with the
same counts in its 'recovered' and 'ready' lines."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.broker.main import Broker
from router.core.config import parse_config
from router.core.runtime import Runtime
from router.core.spool import Spool

from .helpers import make_header

CONFIG = parse_config({
    "destinations": {"pacs": {"type": "folder", "path": "/tmp/h-fix2-never-written"}},
    "rules": [{"name": "all", "forward": ["pacs"]}]})


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with tempfile.TemporaryDirectory(prefix="rt-") as folder:  # short: IPC socket paths
        yield Runtime(Path(folder))


def test_jobs_for_a_removed_destination_are_counted_as_dead_letters(
        tmp_path: Path, runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool").create()
    destinations = ["pacs"] + ["removed"] * 6
    for n, destination in enumerate(destinations):
        received = spool.incoming / f"{n}.tmp"
        received.write_bytes(b"DICM")
        spool.commit(make_header(f"{n:016x}aaaaaaaa", (destination,)), received)
    broker = Broker(CONFIG, runtime, spool)
    try:
        with caplog.at_level(logging.INFO, logger="router.broker"):
            recovery = broker.recover()
    finally:
        broker.close()
    assert (recovery.jobs, recovery.queued, dict(recovery.dead_letters)) == (
        7, 1, {"unknown_destination": 6})
    assert str(recovery) == ("7 jobs recovered from the spool, 1 queued; deliveries made "
                             "dead letters at once: 6 unknown_destination")
    assert str(recovery) in caplog.messages, caplog.messages
    assert len(broker.dispatcher.jobs) == recovery.queued
    assert len(list(spool.dead_letters.glob("*.json"))) == 6
