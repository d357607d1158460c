"""Idle pooled associations are released off the delivery threads (workers/idle_release.py).

A release to a peer whose path went silent (a firewall that dropped the idle flow) waits
for an A-RELEASE-RP that never comes, for the destination's whole acse_timeout. Done by a
delivery thread after its task, that wait held the thread's next delivery."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from router.core.config import RouterConfig, parse_config
from router.core.messages import Deliver, Result, decode
from router.core.spool import Spool
from router.dicom.store_sender import StorePool
from tests.dicom_samples import write_instance
from workers.delivery import DeliveryThread, Reloads
from workers.idle_release import IdleReleaser, release_at_stop

from .helpers import CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN, make_header

ENDPOINT = "inproc://results-idle-release"


class SilentPeerAssociation:
    """An established association whose release waits for an RP that does not come."""

    def __init__(self) -> None:
        self.releasing = threading.Event()
        self.answered = threading.Event()  # the test lets the release end

    @property
    def is_established(self) -> bool:
        return not self.answered.is_set()

    def release(self) -> None:
        self.releasing.set()
        self.answered.wait(10)


def _expired_in(pool: StorePool) -> SilentPeerAssociation:
    silent = SilentPeerAssociation()
    pool.take("pacs", lambda a: True)
    pool.give_back("pacs", silent, idle_timeout=0.0)  # type: ignore[arg-type]
    return silent


@pytest.fixture
def pull() -> Iterator[tuple[zmq.Context[Any], zmq.Socket[bytes]]]:
    context: zmq.Context[Any] = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(ENDPOINT)
    yield context, sock
    sock.close()
    context.destroy(linger=0)


def test_a_delivery_thread_is_not_held_by_an_idle_release_to_a_silent_peer(
    tmp_path: Path, pull: tuple[zmq.Context[Any], zmq.Socket[bytes]],
) -> None:
    context, results = pull
    config = parse_config({
        "spool": {"path": str(tmp_path / "spool"), "duplicate_window": 0},
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive"),
                                     "fsync": False}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    })
    spool = Spool(config.spool.path).create()
    pool = StorePool()
    silent = _expired_in(pool)
    tasks: queue.Queue[Deliver | None] = queue.Queue()
    thread = DeliveryThread(config, spool, tasks, context, ENDPOINT, 0, pool)
    releaser = IdleReleaser(pool, interval=0.05)
    source = write_instance(tmp_path / "sample", sop_class=CT_IMAGE_STORAGE,
                            transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
    jobs = [f"{i:016x}aaaaaaaa" for i in (1, 2)]
    for job_id in jobs:
        spool.instance_path(job_id).write_bytes(source.read_bytes())

    def delivered(job_id: str) -> bool:
        tasks.put(Deliver(make_header(job_id, ("archive",)), "archive", 1))
        if not results.poll(5000):
            return False  # the thread sits in a release
        result = decode(results.recv())
        return isinstance(result, Result) and (result.job_id, result.delivered) == (job_id,
                                                                                  True)

    thread.start()
    try:
        assert delivered(jobs[0])
        # The association has idled past its timeout by now, and its peer never answers.
        releaser.start()
        assert silent.releasing.wait(5), "the expired association was never released"
        assert delivered(jobs[1]), "the next delivery waited for the release"
        assert not silent.answered.is_set()  # it went while the release still waited
    finally:
        silent.answered.set()
        releaser.stop()
        tasks.put(None)
        thread.join(10)
        releaser.join(10)


def test_only_associations_past_their_idle_timeout_are_released() -> None:
    pool = StorePool()
    expired = _expired_in(pool)
    fresh = SilentPeerAssociation()
    pool.take("other", lambda a: True)
    pool.give_back("other", fresh, idle_timeout=60.0)  # type: ignore[arg-type]
    releaser = IdleReleaser(pool, interval=0.05)
    releaser.start()
    try:
        assert expired.releasing.wait(5)
        time.sleep(0.2)  # several more rounds: the fresh one stays
        assert not fresh.releasing.is_set()
        assert pool.open_count("other") == 1 and pool.open_count("pacs") == 0
    finally:
        expired.answered.set()
        releaser.stop()
        releaser.join(5)


def _silent_idle_pool(tmp_path: Path) -> tuple[RouterConfig, Spool, StorePool,
                                                SilentPeerAssociation]:
    """A config whose one destination is a folder, its spool, and a pool holding one idle
    association to `pacs` whose peer never answers a release."""
    config = parse_config({
        "spool": {"path": str(tmp_path / "spool"), "duplicate_window": 0},
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive"),
                                     "fsync": False}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    })
    spool = Spool(config.spool.path).create()
    pool = StorePool()
    silent = SilentPeerAssociation()
    pool.take("pacs", lambda a: True)
    pool.give_back("pacs", silent, idle_timeout=60.0)  # type: ignore[arg-type]
    return config, spool, pool, silent


def test_a_reload_does_not_hold_a_delivery_thread_on_a_silent_peer(
    tmp_path: Path, pull: tuple[zmq.Context[Any], zmq.Socket[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every SIGHUP retires the pooled idle associations (new ones get the new settings).
    The delivery thread that saw it released them itself: one to a destination whose flow a
    firewall had dropped held that thread's next delivery, to another destination, for the
    silent peer's whole acse_timeout."""
    context, results = pull
    config, spool, pool, silent = _silent_idle_pool(tmp_path)
    tasks: queue.Queue[Deliver | None] = queue.Queue()
    thread = DeliveryThread(config, spool, tasks, context, ENDPOINT, 0, pool)
    releaser = IdleReleaser(pool, interval=60.0)  # only a reload's wake makes it release
    source = write_instance(tmp_path / "sample", sop_class=CT_IMAGE_STORAGE,
                            transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
    job_id = f"{1:016x}aaaaaaaa"
    spool.instance_path(job_id).write_bytes(source.read_bytes())
    thread.start()
    releaser.start()
    try:
        monkeypatch.setattr(Reloads, "generation", Reloads.generation + 1)  # a SIGHUP
        tasks.put(Deliver(make_header(job_id, ("archive",)), "archive", 1))
        assert results.poll(5000), "the delivery waited for the release to a silent peer"
        result = decode(results.recv())
        assert isinstance(result, Result) and result.delivered
        assert silent.releasing.wait(5), "the retired association was never released"
        assert pool.take("pacs", lambda a: True)[0] is None  # never used again
    finally:
        silent.answered.set()
        releaser.stop()
        tasks.put(None)
        thread.join(10)
        releaser.join(10)


def test_retired_associations_count_as_open_until_handed_to_the_releaser() -> None:
    """A destination that serves one association at a time answers no new one until the
    retired one is released: while it is still open, a new one it leaves unanswered is
    "busy", not an outage (router/dicom/store_sender.py counts the pool's open ones)."""
    pool = StorePool()
    old = SilentPeerAssociation()
    pool.take("pacs", lambda a: True)
    pool.give_back("pacs", old, idle_timeout=60.0)  # type: ignore[arg-type]
    pool.retire_all_idle()
    assert pool.retired.is_set()
    assert pool.open_count("pacs") == 1
    assert pool.take("pacs", lambda a: True)[0] is None
    pool.give_back("pacs", None, idle_timeout=60.0)
    assert pool.take_expired(time.monotonic()) == [old]
    assert pool.open_count("pacs") == 0
    assert pool.take_all_idle() == []


class AnsweringAssociation:
    def __init__(self) -> None:
        self.released = threading.Event()

    @property
    def is_established(self) -> bool:
        return not self.released.is_set()

    def release(self) -> None:
        self.released.set()


def test_an_ending_delivery_thread_leaves_the_idle_release_to_its_worker(
    tmp_path: Path, pull: tuple[zmq.Context[Any], zmq.Socket[bytes]],
) -> None:
    """A worker stopping (a reload that restarts it) ended its delivery threads, and the
    first to end released every idle association, one by one: one to a black-holed peer
    held the stop, and the reload, for that peer's acse_timeout."""
    context, _ = pull
    config, spool, pool, silent = _silent_idle_pool(tmp_path)
    tasks: queue.Queue[Deliver | None] = queue.Queue()
    thread = DeliveryThread(config, spool, tasks, context, ENDPOINT, 0, pool)
    thread.start()
    try:
        tasks.put(None)
        thread.join(5)
        assert not thread.is_alive(), "the ending thread waited for a silent peer's release"
        assert pool.open_count("pacs") == 1  # left for the worker's release_at_stop
    finally:
        silent.answered.set()
        thread.join(10)


def test_a_stopping_worker_releases_its_idle_associations_at_once_and_bounded() -> None:
    silent = [SilentPeerAssociation(), SilentPeerAssociation()]
    answering = AnsweringAssociation()
    try:
        release_at_stop([*silent, answering], seconds=0.2)  # type: ignore[list-item]
        assert answering.released.is_set()
        assert all(s.releasing.is_set() for s in silent)  # both asked, not one after another
        assert not any(s.answered.is_set() for s in silent)  # it returned without them
    finally:
        for s in silent:
            s.answered.set()


def test_a_silent_peer_does_not_hold_the_release_of_another_destinations_association() -> None:
    """Released one after another on the releaser's thread, each association to a peer whose
    flow a firewall dropped held the release of every other one for its whole acse_timeout:
    a destination that serves one association at a time answered none of the router's new
    ones meanwhile."""
    pool = StorePool()
    silent = _expired_in(pool)  # taken first
    answering = AnsweringAssociation()
    pool.take("other", lambda a: True)
    pool.give_back("other", answering, idle_timeout=0.0)  # type: ignore[arg-type]
    releaser = IdleReleaser(pool, interval=0.05)
    releaser.start()
    try:
        assert silent.releasing.wait(5)
        assert answering.released.wait(5), "its release waited for the silent peer's"
        assert not silent.answered.is_set()
    finally:
        silent.answered.set()
        releaser.stop()
        releaser.join(5)
