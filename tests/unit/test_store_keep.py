"""router/acceptor/store_handler.py, StoreHandler._keep: the broker hears of a job while its
record's group sync runs, and Success still needs both. A real spool on tmp_path and a real
ZeroMQ ROUTER socket answering as the broker does (Accepted / Refused)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from router.acceptor.admission import Admission
from router.acceptor.broker_client import BrokerClient
from router.acceptor.store_handler import StoreHandler
from router.core.config import SpoolConfig
from router.core.dimse_status import Status
from router.core.errors import OutOfResources, QueueFull
from router.core.messages import Accepted, Message, Refused, Submit, decode, encode
from router.core.rules import RuleSet
from router.core.spool import Spool

from .helpers import fail_fdatasync_once, make_header

JOB = "0000000000000001aaaaaaaa"


class Broker(threading.Thread):
    """Answers each Submit with what `answer` returns for it; records what it saw."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str,
                 refuse: bool = False) -> None:
        super().__init__(daemon=True)
        self.sock = context.socket(zmq.ROUTER)
        self.sock.bind(endpoint)
        self.refuse = refuse
        self.seen: list[str] = []
        self.instance_there: list[bool] = []
        self.spool: Spool | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            identity, frame = self.sock.recv_multipart()
            message = decode(frame)
            assert isinstance(message, Submit)
            job_id = message.job.job_id
            self.seen.append(job_id)
            if self.spool is not None:  # the instance is in place before the broker hears
                self.instance_there.append(self.spool.instance_path(job_id).exists())
            reply: Message = Refused(job_id, "queue full (1 jobs)") if self.refuse \
                else Accepted(job_id)
            self.sock.send_multipart([identity, encode(reply)])
        self.sock.close()


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.term()


def handler_for(tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]],
                refuse: bool = False) -> tuple[StoreHandler, Broker, BrokerClient]:
    spool = Spool(tmp_path / "spool").create()
    endpoint = f"inproc://broker-{os.urandom(4).hex()}"
    broker = Broker(context, endpoint, refuse)
    broker.spool = spool
    broker.start()
    client = BrokerClient(context, endpoint, timeout=10)
    admission = Admission(SpoolConfig(path=tmp_path, min_free_bytes=0, min_free_percent=0))
    return StoreHandler(spool, RuleSet([]), client, admission), broker, client


def received(handler: StoreHandler) -> Path:
    path = handler.spool.incoming / f"recv-{os.urandom(4).hex()}.part"
    path.write_bytes(b"DICM-instance-bytes")
    return path


@pytest.fixture
def broken_journal_sync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The journal's group sync fails (EIO) once; the instance's own fsync still works."""
    return fail_fdatasync_once(monkeypatch, errno.EIO)


def stop(broker: Broker, client: BrokerClient) -> None:
    client.close()
    broker.stop.set()
    broker.join(10)


def test_accepted_and_durable_is_success_and_the_job_is_kept(
        tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]]) -> None:
    handler, broker, client = handler_for(tmp_path, context)
    try:
        assert handler._keep(make_header(JOB), received(handler)) == (Status.SUCCESS, "accepted")
    finally:
        stop(broker, client)

    assert broker.seen == [JOB] and broker.instance_there == [True]
    assert [job.header.job_id for job in handler.spool.recover()] == [JOB]  # durable


def test_a_refused_job_is_discarded_and_the_acceptor_turns_work_away(
        tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]]) -> None:
    handler, broker, client = handler_for(tmp_path, context, refuse=True)
    try:
        with pytest.raises(QueueFull):
            handler._keep(make_header(JOB), received(handler))
    finally:
        stop(broker, client)

    assert not handler.spool.instance_path(JOB).exists()
    assert list(handler.spool.recover()) == []
    assert handler.admission.refusal() is not None  # congested for a moment


def test_a_failed_group_sync_is_not_success_but_the_queued_job_stays(
        tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]],
        broken_journal_sync: list[int]) -> None:
    """The broker queued it while the sync ran: a worker may be reading it, so it stays and
    is delivered; the sender is told to retry (0xA700; it may send once more), and the
    acceptor refuses work until the spool takes commits again."""
    handler, broker, client = handler_for(tmp_path, context)
    try:
        with pytest.raises(OutOfResources, match="cannot take commits") as caught:
            handler._keep(make_header(JOB), received(handler))
    finally:
        stop(broker, client)

    cause = caught.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.EIO and broken_journal_sync
    assert handler.admission.refusal() is not None
    assert broker.seen == [JOB]
    assert handler.spool.instance_path(JOB).exists()


def test_a_full_disk_at_the_group_sync_is_out_of_resources(
        tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fail_fdatasync_once(monkeypatch, errno.ENOSPC)
    handler, broker, client = handler_for(tmp_path, context, refuse=True)
    try:
        with pytest.raises(QueueFull):  # refused and not durable: the refusal is the answer
            handler._keep(make_header(JOB), received(handler))
        monkeypatch.setattr(broker, "refuse", False)
        calls.clear()
        with pytest.raises(OutOfResources, match="spool disk full"):
            handler._keep(make_header("0000000000000002bbbbbbbb"), received(handler))
    finally:
        stop(broker, client)
    assert not handler.spool.instance_path(JOB).exists()


def test_a_router_stopping_under_a_submit_is_retry_later_not_a_traceback() -> None:
    """Regression: after kill -9 of the supervisor, an acceptor's C-STORE in its last
    seconds logged "C-STORE failed unexpectedly" with zmq's ContextTerminated (0x0110)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    client = BrokerClient(context, "inproc://no-broker-here", 30.0)
    pending = client.send(make_header("stopping"))
    stopper = threading.Timer(0.2, context.term)  # what the acceptor does when it stops
    stopper.start()
    with pytest.raises(OutOfResources, match="router stopping"):
        pending.wait()
    stopper.join(10)
    with pytest.raises(OutOfResources, match="router stopping"):
        client.send(make_header("after"))
