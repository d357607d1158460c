"""Pre-authentication denial of service at the acceptor (issue 16): what a peer that never
authenticates can make the acceptor allocate, hold or refuse to others.

One router serves the module, with the production acse_timeout (30 s) so that anything
still waiting for it shows; every wait here is bounded and generous (never a timing
assertion). The attacks come from 127.0.0.2, the legitimate peer from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dcmtk import LOCALHOST, run_echoscu
from tests.integration import pdus
from tests.integration.router_process import RouterProcess, http_get, wait_for
from tests.integration.test_fuzz_acceptor import rss_kb, thread_count

pytestmark = pytest.mark.integration

AE = "DICOM-ROUTER"
ATTACKER = "127.0.0.2"  # another loopback source: the per-source limits tell them apart
RSS_LIMIT_KB = 64 * 1024  # growth allowed while one attack runs


def _config(workdir: Path, **listen: Any) -> dict[str, Any]:
    return {
        "destinations": {"keep": {"type": "folder", "path": str(workdir / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
        "listen": {"acse_timeout": 30, "association_request_timeout": 3, **listen},
        "drain_grace": 1,
    }


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    workdir = tmp_path_factory.mktemp("dos-router")
    with RouterProcess(workdir, _config(workdir)) as started:
        yield started


def _connect(port: int, source: str = ATTACKER) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((LOCALHOST, port))
    return sock


def _echo(port: int) -> tuple[int, str]:
    done = run_echoscu(LOCALHOST, port, called_ae=AE, timeout=20)
    return done.returncode, done.stderr.strip()


# Regression: a PDU of an unknown type (pynetdicom reads its header and not its body) put
# the read guard out of step: the next header was taken for a body and the declared length
# after it (3 GiB) was allocated up front, 360 MB -> 3.5 GB for the acse_timeout.


def test_unknown_pdu_type_then_huge_length_allocates_nothing(router: RouterProcess) -> None:
    acceptor = router.child_pid("acceptor-1")
    before = rss_kb(acceptor)
    peak = before
    with _connect(router.port) as sock:
        sock.sendall(bytes.fromhex("000000000000" + "0700C0000000"))
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 10 and not closed:
            peak = max(peak, rss_kb(acceptor))
            closed = pdus.drain(sock, 0.2)[1]
    peak = max(peak, rss_kb(acceptor))
    print(f"\nDOS acceptor RSS {before} kB -> peak {peak} kB")
    assert peak - before < RSS_LIMIT_KB, f"acceptor RSS grew from {before} to {peak} kB"
    assert closed, "the router kept the connection open 10 s after an unknown PDU type"
    assert router.child_pid("acceptor-1") == acceptor


def test_unknown_pdu_type_is_aborted(router: RouterProcess) -> None:
    """PS3.8 9.3.1: an unrecognised PDU is answered with an A-ABORT, then the close."""
    with _connect(router.port) as sock:
        sock.sendall(struct.pack(">BBI", 0x09, 0, 4) + b"\0\0\0\0")
        data, closed = pdus.drain(sock, 10)
    found, _ = pdus.split_pdus(data)
    assert closed and [t for t, _ in found] == [pdus.A_ABORT], found


# Regression: a complete A-ASSOCIATE-RQ that does not decode set the guard's "request read"
# flag, so a close no longer freed the slot: 70 such connections locked everyone out for
# the acse_timeout ("Local Limit Exceeded").


def test_undecodable_requests_that_close_free_their_slots(router: RouterProcess) -> None:
    undecodable = bytes.fromhex("0100000000080200000001010500")
    for _ in range(70):
        with _connect(router.port) as sock:
            sock.sendall(undecodable)
    code, why = _echo(router.port)
    assert code == 0, f"echoscu from 127.0.0.1 refused after 70 undecodable requests: {why}"


def test_a_half_sent_request_is_closed_long_before_the_acse_timeout(
    router: RouterProcess
) -> None:
    """association_request_timeout (3 s here) bounds the wait for a request, not the
    acse_timeout (30 s): a half-open connection held its slot and threads for 30 s."""
    with _connect(router.port) as sock:
        sock.sendall(pdus.a_associate_rq()[:40])
        _, closed = pdus.drain(sock, 15)
    assert closed, "a half-sent A-ASSOCIATE-RQ was still open 15 s later (acse_timeout 30 s)"
    assert router.metric("dicom_router_connections_dropped_total",
                         reason="request_timeout") >= 1


class Flood(threading.Thread):
    """From 127.0.0.2: connections that close at once and connections that send half an
    A-ASSOCIATE-RQ and stall, over and over, until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.opened = 0
        self.held: list[socket.socket] = []

    def run(self) -> None:
        half = pdus.a_associate_rq()[:40]
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                sock = _connect(self.port)
                self.opened += 1
                if self.opened % 2:
                    sock.sendall(half)
                    self.held.append(sock)
                else:
                    sock.close()
            if len(self.held) > 300:
                self.held.pop(0).close()

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        for sock in self.held:
            sock.close()


# Regression: 200 half-open connections held every slot (and 551 threads) for the
# acse_timeout: no deadline for the request, no limit per source, a listen backlog of 5.


def test_a_flood_from_one_source_does_not_lock_out_another(router: RouterProcess) -> None:
    acceptor = router.child_pid("acceptor-1")
    flood = Flood(router.port)
    flood.start()
    try:
        assert wait_for(lambda: flood.opened >= 200, timeout=30), "the flood did not start"
        threads = thread_count(acceptor)
        echoes = [_echo(router.port) for _ in range(3)]
        assert all(code == 0 for code, _ in echoes), (
            f"echoscu from 127.0.0.1 during the flood: {echoes}")
        print(f"\nDOS flood: {flood.opened} connections, acceptor threads {threads}")
        assert threads < 200, f"the acceptor runs {threads} threads for one flooding source"
    finally:
        flood.close()
    assert router.metric("dicom_router_connections_dropped_total",
                         reason="pending_per_source") > 0


# Regression: connections from a handful of addresses, each within max_pending_per_source,
# filled max_pending and kept it full: every modality was closed at accept.


def test_a_flood_from_many_sources_that_fills_the_table_does_not_lock_out_another(
        tmp_path: Path) -> None:
    flooders = [f"127.0.0.{n}" for n in range(2, 6)]
    config = _config(tmp_path, max_pending=16, max_pending_per_source=4)
    with RouterProcess(tmp_path, config) as router:
        stop = threading.Event()
        held: list[socket.socket] = []

        def flood(source: str) -> None:  # four stalled requests each, renewed as they close
            half = pdus.a_associate_rq()[:40]
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    sock = _connect(router.port, source)
                    sock.sendall(half)
                    held.append(sock)
                if len(held) > 64:  # the router closed the old ones long ago
                    with contextlib.suppress(IndexError):
                        held.pop(0).close()
                time.sleep(0.02)

        threads = [threading.Thread(target=flood, args=(s,), daemon=True) for s in flooders]
        for thread in threads:
            thread.start()
        try:
            assert wait_for(lambda: router.metric("dicom_router_connections_dropped_total",
                                                  reason="pending_per_source") > 0,
                            timeout=30), "the flood did not fill the table"
            echoes = [_echo(router.port) for _ in range(3)]
            assert all(code == 0 for code, _ in echoes), (
                f"echoscu from 127.0.0.1 while four addresses fill max_pending: {echoes}")
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            for sock in held:
                sock.close()
        assert router.metric("dicom_router_connections_dropped_total",
                             reason="pending_evicted") > 0


# Regression: the HTTP port (metrics, health) kept a thread for each half-sent request for
# ever: 300 such requests held 303 threads for over a minute.


def test_half_sent_http_requests_do_not_hold_threads(tmp_path: Path) -> None:
    config = {**_config(tmp_path), "metrics": {"request_timeout": 1, "max_connections": 16}}
    with RouterProcess(tmp_path / "http", config) as router:
        assert router.process is not None
        supervisor = router.process.pid
        before = thread_count(supervisor)
        held = []
        for _ in range(100):
            sock = socket.create_connection((LOCALHOST, router.metrics_port), timeout=10)
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /metr")
            held.append(sock)
        try:
            peak = max(_sample(lambda: thread_count(supervisor), seconds=2))
            closed = wait_for(lambda: all(pdus.drain(s, 0.01)[1] for s in held), timeout=20)
            healthy = wait_for(lambda: _healthz(router.metrics_port), timeout=10)
        finally:
            for sock in held:
                sock.close()
        print(f"\nDOS http: supervisor threads {before} -> {peak} with 100 half requests")
        assert closed, "half-sent HTTP requests still open 20 s later"
        assert peak - before <= 20, f"{peak - before} threads for 100 half-sent requests"
        assert healthy, "/healthz did not answer once the half-sent requests were closed"


def _sample(read: Callable[[], int], seconds: float) -> list[int]:
    samples, end = [read()], time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
        samples.append(read())
    return samples


def _healthz(port: int) -> bool:
    try:
        return http_get(port, "/healthz")[0] == 200
    except OSError:
        return False


def test_the_listen_backlog_is_sized_for_bursts(router: RouterProcess) -> None:
    """socketserver's backlog of 5 made 7 of 50 quick connects wait a second for a SYN
    retransmit; listen.backlog (128) is what `ss` shows as the listener's Send-Q."""
    shown = subprocess.run(["ss", "-ltnH", f"sport = :{router.port}"], capture_output=True,
                           text=True, timeout=10, check=False)
    # ss (iproute2) is installed by scripts/install-test-deps.sh.
    assert shown.returncode == 0, f"ss failed: {shown.stderr.strip()}"
    backlogs = {int(line.split()[2]) for line in shown.stdout.splitlines() if line.strip()}
    assert backlogs == {128}, shown.stdout


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """The first PDU the router sends back (type, body)."""
    return pdus.read_pdu(sock)


# Regression: max_associations was the only count over associations, so 64 idle ones from
# one address (whatever calling AE titles it claimed) locked every other peer out for as
# long as it kept them open.


def test_one_source_holds_at_most_half_the_associations(router: RouterProcess) -> None:
    held: list[socket.socket] = []
    answers: list[int] = []
    try:
        for n in range(40):
            sock = _connect(router.port)
            sock.sendall(pdus.a_associate_rq(calling_ae=f"HOLD{n}"))
            kind, body = _answer(sock)
            answers.append(kind)
            if kind == pdus.A_ASSOCIATE_AC:
                held.append(sock)
            else:
                assert body[1:] == bytes((2, 3, 2)), body  # transient, provider, local limit
                sock.close()
        assert answers.count(pdus.A_ASSOCIATE_AC) == 32, answers  # max_associations 64 / 2
        code, why = _echo(router.port)
        assert code == 0, f"echoscu from 127.0.0.1 refused while 127.0.0.2 held 32: {why}"
    finally:
        for sock in held:
            sock.close()
    assert router.metric("dicom_router_association_rejections_total",
                         reason="per_source_limit") >= 8


# Regression: an A-ASSOCIATE-RQ of 13,008 presentation contexts (256 KiB) was accepted and
# held as objects for the association's life: 64 of them took the acceptor from 86 to 372
# MB, which it never gave back.


def test_a_request_of_thousands_of_contexts_is_refused_and_held_nowhere(
        router: RouterProcess) -> None:
    acceptor = router.child_pid("acceptor-1")
    context = pdus.presentation_context_rq_item(3, "11", ("11",))
    items = [pdus.application_context_item(),
             pdus.presentation_context_rq_item(1, pdus.VERIFICATION, (pdus.IMPLICIT_VR_LE,)),
             *[context] * ((256 * 1024 - 2000) // len(context)), pdus.user_information_item()]
    request = pdus.a_associate_rq(items=items)
    before = rss_kb(acceptor)
    for _ in range(64):
        with _connect(router.port) as sock:
            sock.sendall(request)
            kind, _ = _answer(sock)
            assert kind == pdus.A_ABORT
    grown = rss_kb(acceptor) - before
    assert grown < RSS_LIMIT_KB, f"the acceptor grew {grown} KB for 64 refused requests"
    code, why = _echo(router.port)
    assert code == 0, why


# Regression: these reached the building of the A-ASSOCIATE-AC, which raised: the peer saw
# its connection closed without an answer, the log an ERROR with a traceback.


def test_an_empty_calling_ae_and_repeated_role_items_are_answered_not_crashed_on(
        router: RouterProcess) -> None:
    with _connect(router.port) as sock:
        sock.sendall(pdus.a_associate_rq(calling_ae=""))
        kind, body = _answer(sock)
        assert (kind, body[1:]) == (pdus.A_ASSOCIATE_RJ, bytes((1, 1, 3))), (kind, body)
    role = pdus.item(0x54, struct.pack(">H", len(pdus.CT_IMAGE_STORAGE))
                     + pdus.CT_IMAGE_STORAGE.encode() + b"\x01\x01")
    info = pdus.item(pdus.USER_INFORMATION_ITEM, pdus.maximum_length_item(16384)
                     + pdus.item(pdus.IMPLEMENTATION_CLASS_UID_ITEM, pdus.uid("1.2.3"))
                     + role * 1985)
    items = [*pdus.associate_rq_items()[:-1], info]
    with _connect(router.port) as sock:
        sock.sendall(pdus.a_associate_rq(items=items))
        assert _answer(sock)[0] == pdus.A_ABORT
    with _connect(router.port) as sock:  # a few of them, as a C-GET requester sends: answered
        sock.sendall(pdus.a_associate_rq(items=[*pdus.associate_rq_items()[:-1], pdus.item(
            pdus.USER_INFORMATION_ITEM, pdus.maximum_length_item(16384)
            + pdus.item(pdus.IMPLEMENTATION_CLASS_UID_ITEM, pdus.uid("1.2.3")) + role * 3)]))
        kind, body = _answer(sock)
        assert kind == pdus.A_ASSOCIATE_AC
        roles = [sub for item_type, value in pdus.parse_items(body[68:])
                 if item_type == pdus.USER_INFORMATION_ITEM
                 for sub_type, sub in pdus.parse_items(value) if sub_type == 0x54]
        assert len(roles) == 1, roles  # answered once for its SOP class
    assert "Traceback" not in router.log()
