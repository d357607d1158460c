"""Fuzz the acceptor with raw PDUs: random bytes, truncated and malformed A-ASSOCIATE-RQs,
wrong and huge lengths, garbage and malformed P-DATA after a valid association, C-STOREs
whose dataset never ends, abrupt closes, idle connections.

One router serves the whole module. Each hypothesis test is one bounded batch of attacks
over raw sockets (every wait is short and bounded); after each batch:

- a real DCMTK echoscu and a raw associate/C-ECHO/release both still succeed,
- the acceptor is the very process that started (the supervisor restarting it means it
  crashed: that is a failure, not a recovery),
- /readyz answers 200 and no association is left counted as active.

At the end the acceptor's RSS must be within RSS_GROWTH_LIMIT of its value after warm-up.
The tests at the bottom are regressions for router bugs this module found (each comment says
what used to happen); the acceptor (router/acceptor/connection.py) guards against them.

`test_mutated_captured_sessions` replays mutations of real echoscu/storescu sessions
(tests/integration/session_corpus.py). `DICOM_ROUTER_FUZZ_SCALE=10 pytest ...` runs ten times
the examples; `python -m loadtest.fuzz --sessions 2000` runs the mutation corpus for minutes
and prints the acceptor's RSS over time.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dcmtk import LOCALHOST, run_echoscu, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration import pdus, session_corpus
from tests.integration.router_process import RouterProcess, http_get, wait_for

pytestmark = pytest.mark.integration

AE = "DICOM-ROUTER"
ACSE_TIMEOUT = 2.0  # listen.acse_timeout of the router under test (default 30)
NETWORK_TIMEOUT = 2.0  # listen.network_timeout: idle established associations (default 60)
MAX_ASSOCIATIONS = 64  # listen.max_associations, the default
LISTEN_WINDOW = 0.15  # how long a "linger" attack listens for the router's answer
# How long the router may take to close after the peer's FIN. A close normally takes well
# under 0.5 s (400 random connections: at most 0.32 s), and acse_timeout closes any silent
# connection at 2 s; yet in 2 of 5 full-suite runs on a fresh clone the first attack of this
# module saw no close within 3 s, then 6 s, never reproduced alone, under CPU load or in a
# loop. The bug this guards is a connection kept for ever: 15 s still catches it, and a
# close slower than 2 s is printed (pytest -s) to chase the cause (see the closing note).
CLOSE_WINDOW = 15.0
SLOW_CLOSE = 2.0
RSS_GROWTH_LIMIT_KB = 50 * 1024
SCALE = float(os.environ.get("DICOM_ROUTER_FUZZ_SCALE", "1"))

# How an attack ends: close at once, reset (RST), half-close and wait for the router to
# close too, or listen a moment for its answer and then close.
ENDINGS = ("close", "reset", "half_close", "linger")
# PDU types the acceptor may send: AC, RJ, P-DATA-TF, RELEASE-RP, ABORT.
ANSWER_TYPES = {pdus.A_ASSOCIATE_AC, pdus.A_ASSOCIATE_RJ, pdus.P_DATA_TF,
                pdus.A_RELEASE_RP, pdus.A_ABORT}

STORAGE_CONTEXT = 3  # CT Image Storage in pdus.DEFAULT_CONTEXTS; 1 is Verification
SOP_CLASSES = (
    pdus.VERIFICATION,
    pdus.CT_IMAGE_STORAGE,
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root Q/R FIND: not supported by the router
    "1.2.3.4.5.6.7.8.9",  # unknown
)
TRANSFER_SYNTAXES = (
    pdus.IMPLICIT_VR_LE, pdus.EXPLICIT_VR_LE, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.1.99", "1.2.3.999",
)
HUGE_LENGTHS = (0xFFFFFFF0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x10000000)


# --- the router and what we read of it -------------------------------------------------


@dataclass
class Target:
    router: RouterProcess
    acceptor_pid: int
    rss_kb: int = 0  # VmRSS of the acceptor after warm-up
    fds: int = 0  # open file descriptors of the acceptor after warm-up
    threads: int = 0  # threads of the acceptor after warm-up (2 per open association)
    answers: Counter[str] = field(default_factory=Counter)  # what the router did, by attack

    @property
    def port(self) -> int:
        return self.router.port


def fuzz_config(workdir: Path) -> dict[str, Any]:
    return {
        "destinations": {"keep": {"type": "folder", "path": str(workdir / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
        # Attacks and health checks all come from 127.0.0.1: the per-source cap on pending
        # connections (test_acceptor_dos.py) would turn the checks away with the attacks.
        # One acceptor: its RSS, threads and pid are what the checks watch.
        "listen": {"acse_timeout": ACSE_TIMEOUT, "network_timeout": NETWORK_TIMEOUT,
                   "max_pending_per_source": 128, "acceptors": 1},
        "drain_grace": 1,
    }


def proc_status(pid: int, key: str) -> str | None:
    """One field of /proc/<pid>/status, None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fp:
            for line in fp:
                if line.startswith(key + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def rss_kb(pid: int) -> int:
    value = proc_status(pid, "VmRSS")
    if value is None:
        raise ProcessLookupError(f"process {pid} is gone")
    return int(value.split()[0])


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def alive(pid: int) -> bool:
    state = proc_status(pid, "State")
    return state is not None and not state.startswith(("Z", "X"))


def incoming_files(router: RouterProcess) -> set[str]:
    folder = router.spool / "incoming"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def assert_acceptor_alive(t: Target) -> None:
    assert alive(t.acceptor_pid), (
        f"the acceptor (pid {t.acceptor_pid}) died: a crash is a bug\n{t.router.log()[-4000:]}")


def settle(t: Target) -> None:
    """Wait until the association threads of the batch are gone.

    A connection closed before its A-ASSOCIATE-RQ was complete keeps its association slot
    for listen.acse_timeout (see test_closing_before_associating_frees_the_slot): a batch of
    short connections can hold every slot for that long. Every thread must be gone within
    the timeouts once the peer has closed; one that stays is a leak.
    """
    limit = t.threads + 4
    settled = wait_for(lambda: thread_count(t.acceptor_pid) <= limit,
                       timeout=ACSE_TIMEOUT + NETWORK_TIMEOUT + 5, interval=0.1)
    assert settled, (f"the acceptor still runs {thread_count(t.acceptor_pid)} threads "
                     f"(baseline {t.threads}) after every attack closed its connection")


def assert_healthy(t: Target) -> None:
    """The router stays up and other associations keep working."""
    router = t.router
    settle(t)
    assert router.process is not None and router.process.poll() is None, "the router exited"
    echo = run_echoscu(LOCALHOST, router.port, called_ae=AE, timeout=15)
    assert echo.returncode == 0, f"echoscu failed:\n{echo.stdout}{echo.stderr}"
    assert pdus.valid_echo_session(LOCALHOST, router.port) == 0x0000
    newest = router.child_pid("acceptor-1")
    assert newest == t.acceptor_pid, (
        f"the acceptor was restarted (pid {t.acceptor_pid} -> {newest}): it crashed\n"
        f"{router.log()[-4000:]}")
    assert_acceptor_alive(t)
    assert router.metric("dicom_router_process_restarts_total", process="acceptor") == 0
    status, body = http_get(router.metrics_port, "/readyz")
    assert status == 200, f"/readyz {status}: {body}"


# --- one attack: connect, (associate,) send, end ------------------------------------------


@dataclass
class Answer:
    pdu_types: list[int]
    closed: bool  # the router closed the connection

    def label(self) -> str:
        names = {2: "AC", 3: "RJ", 4: "P-DATA", 6: "RP", 7: "ABORT"}
        said = "+".join(names.get(t, hex(t)) for t in self.pdu_types) or "nothing"
        return f"{said}, {'closed' if self.closed else 'open'}"


def _finish(sock: socket.socket, ending: str) -> Answer:
    if ending == "close":
        return Answer([], False)
    if ending == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return Answer([], False)
    if ending == "half_close":
        with contextlib.suppress(OSError):  # the router may already have reset it
            sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        data, closed = pdus.drain(sock, CLOSE_WINDOW)
        took = time.monotonic() - started
        if took > SLOW_CLOSE:
            print(f"SLOW CLOSE: the router took {took:.1f}s to close after the peer's FIN")
        assert closed, f"the router kept a connection open {CLOSE_WINDOW}s after the peer's FIN"
    else:
        data, closed = pdus.drain(sock, LISTEN_WINDOW)
    found, rest = pdus.split_pdus(data)
    types = [pdu_type for pdu_type, _ in found]
    assert set(types) <= ANSWER_TYPES, f"the router answered PDU types {types}"
    assert not (closed and rest), f"the router closed after a partial PDU: {rest[:32].hex()}"
    return Answer(types, closed)


def attack(t: Target, chunks: Sequence[bytes], *, ending: str = "linger",
           associate: bool = False, name: str = "") -> Answer:
    """Send `chunks` (after a valid association if `associate`), then end as `ending` says."""
    with pdus.RawAssociation(LOCALHOST, t.port, timeout=5.0) as conn:
        if associate:
            conn.associate()
            conn.accepted_context(1)
            conn.accepted_context(STORAGE_CONTEXT)
        for chunk in chunks:
            try:
                conn.send(chunk)
            except OSError:
                break  # the router closed first: allowed
        answer = _finish(conn.sock, ending)
    t.answers[f"{name}: {answer.label()}"] += 1
    assert_acceptor_alive(t)
    return answer


def batch(examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings of one bounded batch (scaled by DICOM_ROUTER_FUZZ_SCALE)."""
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,
        database=None,  # nothing written to the working tree
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


# --- strategies ------------------------------------------------------------------------

endings = st.sampled_from(ENDINGS)

contexts = st.lists(
    st.tuples(st.sampled_from(SOP_CLASSES),
              st.lists(st.sampled_from(TRANSFER_SYNTAXES), min_size=1, max_size=4)),
    min_size=1, max_size=8,
).map(lambda cxs: [(2 * i + 1, sop, tuple(ts)) for i, (sop, ts) in enumerate(cxs)])

valid_rq = st.builds(
    lambda cxs, max_pdu: pdus.a_associate_rq(contexts=cxs, max_pdu=max_pdu),
    contexts, st.sampled_from([0, 1, 4096, 16384, 0xFFFFFFFF]),
)

# Any bytes, or a plausible PDU header (any type, any length) followed by any bytes.
first_pdus = st.one_of(
    st.binary(max_size=1024),
    st.builds(lambda kind, length, body: struct.pack(">BBI", kind, 0, length) + body,
              st.integers(0, 255), st.integers(0, 0xFFFFFFFF), st.binary(max_size=512)),
)


@st.composite
def truncated_rqs(draw: st.DrawFn) -> bytes:
    """A valid A-ASSOCIATE-RQ cut inside one kind of field (header, AE, item, sub-item)."""
    rq = draw(valid_rq)
    _, start, end = draw(st.sampled_from(pdus.associate_rq_spans(rq)))
    return rq[:draw(st.integers(start, max(start, end - 1)))]


@st.composite
def wrong_length_rqs(draw: st.DrawFn) -> bytes:
    """A valid A-ASSOCIATE-RQ with wrong lengths in some item headers (and the PDU's)."""
    rq = bytearray(draw(valid_rq))
    headers = [s for s in pdus.associate_rq_spans(bytes(rq)) if s[0].endswith("header")]
    for _, start, _ in draw(st.lists(st.sampled_from(headers), min_size=1, max_size=3)):
        true_length = struct.unpack_from(">H", rq, start + 2)[0]
        length = draw(st.one_of(st.integers(0, 0xFFFF),
                                st.integers(-4, 4).map(lambda d, n=true_length: (n + d) % 0x10000)))
        struct.pack_into(">H", rq, start + 2, length)
    pdu_length = draw(st.sampled_from(["true", "near", "any"]))
    if pdu_length == "near":
        struct.pack_into(">I", rq, 2, max(0, len(rq) - 6 + draw(st.integers(-8, 8))))
    elif pdu_length == "any":
        struct.pack_into(">I", rq, 2, draw(st.integers(0, 0xFFFFFFFF)))
    if draw(st.booleans()):  # hostile fixed fields too: version, AE titles
        struct.pack_into(">H", rq, 6, draw(st.integers(0, 0xFFFF)))
        rq[10:42] = draw(st.binary(min_size=32, max_size=32))
    return bytes(rq)


@st.composite
def malformed_p_data(draw: st.DrawFn) -> bytes:
    """A P-DATA-TF of 1-4 PDVs with wrong item lengths, context IDs and control bytes."""
    items = []
    for _ in range(draw(st.integers(1, 4))):
        data = draw(st.one_of(st.binary(max_size=300), st.just(pdus.c_echo_rq())))
        length = draw(st.one_of(st.none(), st.integers(0, 3), st.integers(0, len(data) + 16),
                                st.sampled_from(HUGE_LENGTHS)))
        context_id = draw(st.sampled_from([1, STORAGE_CONTEXT, 0, 2, 5, 255]))
        control = draw(st.integers(0, 255))
        items.append(pdus.pdv(context_id, data, command=True, length=length, control=control))
    body = b"".join(items)
    length = draw(st.one_of(st.none(), st.integers(0, len(body) + 16)))
    return pdus.pdu(pdus.P_DATA_TF, body, length=length)


def _flip(data: bytes, positions: list[int], values: list[int]) -> bytes:
    out = bytearray(data)
    for at, value in zip(positions, values, strict=False):
        out[at % len(out)] = value
    return bytes(out)


@st.composite
def bad_commands(draw: st.DrawFn) -> bytes:
    """Command set bytes that do not decode, or decode into nonsense."""
    valid = draw(st.sampled_from([pdus.c_echo_rq(), pdus.c_store_rq("1.2.3.4")]))
    kind = draw(st.sampled_from(
        ["random", "flipped", "truncated", "huge_element", "unknown_field", "missing", "sizes"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "flipped":
        positions = draw(st.lists(st.integers(0, len(valid) - 1), min_size=1, max_size=6))
        values = draw(st.lists(st.integers(0, 255), min_size=len(positions),
                               max_size=len(positions)))
        return _flip(valid, positions, values)
    if kind == "truncated":
        return valid[:draw(st.integers(0, len(valid) - 1))]
    if kind == "huge_element":
        tag = draw(st.sampled_from([0x00000000, 0x00000002, 0x00000100, 0x00001000]))
        return valid[:12] + pdus.element(tag, b"\x01\x00", length=draw(st.sampled_from(
            HUGE_LENGTHS))) + draw(st.binary(max_size=64))
    fields = {0x00000002: pdus.CT_IMAGE_STORAGE.encode() + b"\0", 0x00000100: b"\x01\x00",
              0x00000110: b"\x01\x00", 0x00000800: b"\x01\x01", 0x00001000: b"1.2.3.4\0"}
    if kind == "unknown_field":
        fields[0x00000100] = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
        fields[0x00000800] = struct.pack("<H", draw(st.sampled_from([0x0101, 0x0000, 0xFFFE])))
    elif kind == "missing":
        for tag in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=4)):
            fields.pop(tag, None)
    else:  # values of the wrong size for their VR
        for tag in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3)):
            fields[tag] = draw(st.binary(max_size=9))
    return pdus.command_set(fields)


# --- the router under test ---------------------------------------------------------------


def warm_up(t: Target, workdir: Path) -> None:
    """Exercise every code path once so that lazy imports and caches are in the baseline."""
    instance = write_instance(workdir / "warmup", sop_class=pdus.CT_IMAGE_STORAGE,
                              transfer_syntax=EXPLICIT_VR_LE)
    stored = run_storescu([instance], LOCALHOST, t.port, called_ae=AE, timeout=30)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    for _ in range(5):
        assert pdus.valid_echo_session(LOCALHOST, t.port) == 0
    rq = pdus.a_associate_rq()
    for ending in ENDINGS:
        attack(t, [b"\xff" * 64], ending=ending, name="warm-up")
        attack(t, [rq[:100]], ending=ending, name="warm-up")
        attack(t, [b"\x04\x00\xff\xff\xff\xf0abc"], ending=ending, associate=True, name="warm-up")
        attack(t, [pdus.p_data_tf([pdus.pdv(1, b"\x00" * 40, command=True)])],
               ending=ending, associate=True, name="warm-up")
        attack(t, [pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, pdus.c_store_rq("1.2.3"),
                                            command=True)]),
                   pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, b"\x00" * 1000, command=False,
                                            last=False)])],
               ending=ending, associate=True, name="warm-up")
    time.sleep(ACSE_TIMEOUT + 1)  # every warm-up association is over
    t.threads = thread_count(t.acceptor_pid)
    assert_healthy(t)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("fuzz-router")
    with RouterProcess(workdir, fuzz_config(workdir)) as router:
        t = Target(router, router.child_pid("acceptor-1"))
        warm_up(t, workdir)
        t.rss_kb, t.fds = rss_kb(t.acceptor_pid), fd_count(t.acceptor_pid)
        yield t
        print(f"\nFUZZ acceptor RSS {t.rss_kb} kB after warm-up, "
              f"{rss_kb(t.acceptor_pid) if alive(t.acceptor_pid) else 'gone'} kB at the end")
        for what, count in sorted(t.answers.items()):
            print(f"FUZZ {count:5d} x {what}")


# --- batches of attacks ------------------------------------------------------------------


def test_builders_match_pynetdicom_decoders() -> None:
    """pdus.py writes what pynetdicom reads back (no router needed)."""
    from io import BytesIO

    from pynetdicom.dsutils import decode
    from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF

    rq = A_ASSOCIATE_RQ()
    rq.decode(pdus.a_associate_rq(max_pdu=12345))
    assert (rq.called_ae_title, rq.calling_ae_title) == ("DICOM-ROUTER", "FUZZER")
    assert rq.application_context_name == pdus.APPLICATION_CONTEXT
    assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax)
            for cx in rq.presentation_context] == [
        (1, pdus.VERIFICATION, [pdus.IMPLICIT_VR_LE]),
        (3, pdus.CT_IMAGE_STORAGE, [pdus.EXPLICIT_VR_LE, pdus.IMPLICIT_VR_LE])]
    assert rq.user_information.maximum_length == 12345
    p_data = P_DATA_TF()
    p_data.decode(pdus.p_data_tf([pdus.pdv(1, pdus.c_echo_rq(7), command=True)]))
    (item,) = p_data.presentation_data_value_items
    assert item.context_id == 1 and item.presentation_data_value[0] == 0x03
    command = decode(BytesIO(item.presentation_data_value[1:]), True, True)
    assert (command.CommandField, command.MessageID, command.CommandDataSetType) == (
        0x30, 7, 0x0101)
    assert command.CommandGroupLength == len(pdus.c_echo_rq(7)) - 12
    store = decode(BytesIO(pdus.c_store_rq("1.2.3.4")), True, True)
    assert (store.AffectedSOPInstanceUID, store.CommandDataSetType) == ("1.2.3.4", 0)
    A_RELEASE_RQ().decode(pdus.a_release_rq())
    abort = A_ABORT_RQ()
    abort.decode(pdus.a_abort(2, 1))
    assert (abort.source, abort.reason_diagnostic) == (2, 1)


def test_valid_raw_session(target: Target) -> None:
    assert pdus.valid_echo_session(LOCALHOST, target.port) == 0x0000
    with pdus.RawAssociation(LOCALHOST, target.port) as conn:
        ac = conn.associate()
        assert conn.accepted_context(1) == pdus.IMPLICIT_VR_LE
        assert conn.accepted_context(STORAGE_CONTEXT) == pdus.EXPLICIT_VR_LE  # sender's first
        assert ac.max_pdu > 0
        assert [conn.echo(message_id=n) for n in (1, 2, 3)] == [0, 0, 0]
        conn.release()


def test_random_bytes_as_first_pdu(target: Target) -> None:
    @batch(60)
    @given(data=first_pdus, ending=endings)
    def run(data: bytes, ending: str) -> None:
        attack(target, [data], ending=ending, name="random first PDU")

    run()
    assert_healthy(target)


def test_truncated_associate_rq(target: Target) -> None:
    @batch(40)
    @given(data=truncated_rqs(), ending=endings)
    def run(data: bytes, ending: str) -> None:
        attack(target, [data], ending=ending, name="truncated A-ASSOCIATE-RQ")

    run()
    assert_healthy(target)


def test_associate_rq_cut_inside_every_field(target: Target) -> None:
    """Deterministically: cut at the first, middle and last byte of every field."""
    rq = pdus.a_associate_rq()
    cuts = sorted({at for _, start, end in pdus.associate_rq_spans(rq)
                   for at in (start, (start + end) // 2, max(start, end - 1))})
    for cut in cuts:
        attack(target, [rq[:cut]], ending="half_close", name="A-ASSOCIATE-RQ cut in a field")
    assert_healthy(target)


def test_wrong_item_lengths(target: Target) -> None:
    @batch(50)
    @given(data=wrong_length_rqs(), ending=endings)
    def run(data: bytes, ending: str) -> None:
        attack(target, [data], ending=ending, name="wrong item lengths")

    run()
    assert_healthy(target)


def test_huge_declared_pdu_lengths(target: Target) -> None:
    body = pdus.a_associate_rq()[6:]

    @batch(40)
    @given(kind=st.one_of(st.integers(1, 7), st.integers(0, 255)),
           length=st.one_of(st.sampled_from(HUGE_LENGTHS), st.integers(1 << 20, 0xFFFFFFFF)),
           data=st.one_of(st.binary(max_size=4096), st.just(body)),
           associate=st.booleans(), ending=endings)
    def run(kind: int, length: int, data: bytes, associate: bool, ending: str) -> None:
        attack(target, [struct.pack(">BBI", kind, 0, length) + data], ending=ending,
               associate=associate, name="huge PDU length")

    run()
    assert_healthy(target)


def test_garbage_after_valid_association(target: Target) -> None:
    @batch(40)
    @given(data=st.binary(min_size=1, max_size=4096), ending=endings)
    def run(data: bytes, ending: str) -> None:
        attack(target, [data], ending=ending, associate=True, name="garbage after association")

    run()
    assert_healthy(target)


def test_malformed_pdvs(target: Target) -> None:
    @batch(50)
    @given(data=st.lists(malformed_p_data(), min_size=1, max_size=3), ending=endings)
    def run(data: list[bytes], ending: str) -> None:
        attack(target, data, ending=ending, associate=True, name="malformed PDVs")

    run()
    assert_healthy(target)


def test_pdv_declaring_a_huge_length(target: Target) -> None:
    @batch(25)
    @given(length=st.one_of(st.sampled_from(HUGE_LENGTHS), st.integers(1 << 16, 0xFFFFFFFF)),
           data=st.binary(max_size=2048), command=st.booleans(), ending=endings)
    def run(length: int, data: bytes, command: bool, ending: str) -> None:
        p_data = pdus.p_data_tf([pdus.pdv(1, data, command=command, length=length)])
        attack(target, [p_data], ending=ending, associate=True, name="huge PDV length")

    run()
    assert_healthy(target)


def test_command_set_that_does_not_decode(target: Target) -> None:
    @batch(50)
    @given(command=bad_commands(), context_id=st.sampled_from([1, STORAGE_CONTEXT]),
           fragments=st.integers(1, 3), dataset=st.none() | st.binary(max_size=256),
           ending=endings)
    def run(command: bytes, context_id: int, fragments: int, dataset: bytes | None,
            ending: str) -> None:
        step = max(1, -(-len(command) // fragments))
        parts = [command[i:i + step] for i in range(0, len(command), step)] or [b""]
        pdvs = [pdus.pdv(context_id, part, command=True, last=i == len(parts) - 1)
                for i, part in enumerate(parts)]
        chunks = [pdus.p_data_tf([p]) for p in pdvs]
        if dataset is not None:
            chunks.append(pdus.p_data_tf([pdus.pdv(context_id, dataset, command=False)]))
        attack(target, chunks, ending=ending, associate=True, name="undecodable command set")

    run()
    assert_healthy(target)


def test_store_whose_dataset_never_ends(target: Target) -> None:
    @batch(30)
    @given(sizes=st.lists(st.integers(0, 65536), max_size=6),
           ending=st.sampled_from([*ENDINGS, "abort"]), uid_suffix=st.integers(1, 10**6))
    def run(sizes: list[int], ending: str, uid_suffix: int) -> None:
        command = pdus.c_store_rq(f"1.2.826.0.1.3680043.9.7156.99.{uid_suffix}")
        chunks = [pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, command, command=True)])]
        chunks += [pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, b"\x00" * n, command=False,
                                            last=False)]) for n in sizes]
        if ending == "abort":
            chunks.append(pdus.a_abort())
        attack(target, chunks, ending="linger" if ending == "abort" else ending,
               associate=True, name="C-STORE dataset never ends")

    run()
    assert_healthy(target)


def test_valid_association_then_abrupt_close(target: Target) -> None:
    echo = pdus.p_data_tf([pdus.pdv(1, pdus.c_echo_rq(), command=True)])

    @batch(20)
    @given(sent=st.sampled_from([b"", echo, echo[:9], echo * 3, pdus.a_release_rq()]),
           ending=st.sampled_from(["close", "reset"]))
    def run(sent: bytes, ending: str) -> None:
        attack(target, [sent], ending=ending, associate=True, name="abrupt close")

    run()
    assert_healthy(target)


def test_idle_connections_do_not_block_others(target: Target) -> None:
    """Slow loris: connections that send nothing (fewer than max_associations), and
    established associations that go quiet, do not stop a real echoscu; the router closes
    each after its timeout (listen.acse_timeout, listen.network_timeout)."""
    idle = [socket.create_connection((LOCALHOST, target.port)) for _ in range(40)]
    quiet = [pdus.RawAssociation(LOCALHOST, target.port) for _ in range(5)]
    try:
        for conn in quiet:
            conn.associate()
        started = time.monotonic()
        echo = run_echoscu(LOCALHOST, target.port, called_ae=AE, timeout=15)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert pdus.valid_echo_session(LOCALHOST, target.port) == 0
        # Quiet associations are aborted after network_timeout, then closed (ARTIM).
        deadline = started + NETWORK_TIMEOUT + ACSE_TIMEOUT + 3
        still_open = [sock for sock in [*idle, *(c.sock for c in quiet)]
                      if not pdus.drain(sock, max(0.05, deadline - time.monotonic()))[1]]
        assert not still_open, f"{len(still_open)} idle connections still open after timeout"
    finally:
        for sock in idle:
            sock.close()
        for conn in quiet:
            conn.close()
    assert_healthy(target)


MUTATED_SESSIONS = 60  # x DICOM_ROUTER_FUZZ_SCALE; loadtest/fuzz.py runs thousands


@pytest.fixture(scope="module")
def corpus(target: Target, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return session_corpus.capture(target.port, tmp_path_factory.mktemp("corpus"))


def test_mutated_captured_sessions(target: Target, corpus: list[bytes]) -> None:
    """Real echoscu/storescu/pynetdicom sessions, mutated (bit flips, truncation, wrong
    lengths, splices, unknown PDU types followed by huge lengths) and replayed."""
    seed = int(os.environ.get("DICOM_ROUTER_FUZZ_SEED", "16"))
    rng = random.Random(seed)
    baseline = rss_kb(target.acceptor_pid)
    peaks = [baseline]

    def sample() -> None:
        peaks.append(rss_kb(target.acceptor_pid))

    for i in range(max(1, round(MUTATED_SESSIONS * SCALE))):
        names, data = session_corpus.mutate(rng.choice(corpus), rng)
        answer = session_corpus.replay(target.port, data, wait=LISTEN_WINDOW, while_open=sample)
        assert set(answer.answer_types) <= ANSWER_TYPES, (
            f"session {i} (seed {seed}, {names}): the router answered {answer.answer_types}")
        target.answers[f"mutated {names.split('+')[0]}: {'closed' if answer.closed else 'open'}"
                       ] += 1
        assert_acceptor_alive(target)
    peak = max(peaks)
    # Before issue 16 an unknown PDU type then a huge length allocated that length.
    assert peak - baseline < STREAM_LIMIT_KB, (
        f"acceptor RSS {baseline} -> peak {peak} kB while replaying mutated sessions")
    assert_healthy(target)


def test_memory_stays_flat(target: Target) -> None:
    """After every batch above, the acceptor's RSS is within bounds of its warm-up value."""
    assert_acceptor_alive(target)
    limit = target.rss_kb + RSS_GROWTH_LIMIT_KB
    flat = wait_for(lambda: rss_kb(target.acceptor_pid) <= limit, timeout=10, interval=0.5)
    now = rss_kb(target.acceptor_pid)
    print(f"\nFUZZ acceptor RSS {target.rss_kb} -> {now} kB, "
          f"fds {target.fds} -> {fd_count(target.acceptor_pid)}")
    assert flat, f"acceptor RSS grew from {target.rss_kb} kB to {now} kB (limit {limit} kB)"
    assert target.router.child_pid("acceptor-1") == target.acceptor_pid


# --- regressions: router bugs this module found ------------------------------------------

# Regression (pynetdicom era, kept for the engine): router/acceptor/main.py (build_ae /
# start_server): accepted sockets have no timeout, and pynetdicom's DUL reads a PDU with a
# blocking recv() of its declared length. A peer that sends part of a PDU (here 20 bytes of an
# A-ASSOCIATE-RQ, or a P-DATA-TF header) and goes quiet blocks the DUL thread forever:
# ARTIM/acse_timeout and network_timeout are never checked, Association.kill() waits for Sta1
# forever, and the association keeps its connection and its max_associations slot for as long
# as the peer likes. 64 such connections turn every sender away (A-ASSOCIATE-RJ 'local limit
# exceeded').


def test_stalled_pdus_are_dropped_after_the_timeouts(target: Target) -> None:
    """Connections that stop in the middle of a PDU are closed after acse_timeout (before
    the association) or network_timeout (after it), and never lock other senders out."""
    stalled: list[socket.socket] = []
    established = pdus.RawAssociation(LOCALHOST, target.port)
    try:
        established.associate()
        established.send(pdus.p_data_tf([pdus.pdv(1, pdus.c_echo_rq(), command=True)])[:9])
        rq = pdus.a_associate_rq()
        for i in range(MAX_ASSOCIATIONS):
            sock = socket.create_connection((LOCALHOST, target.port))
            sock.sendall(rq[:20] if i % 2 else struct.pack(">BBI", 1, 0, 0xFFFFFFF0) + b"abc")
            stalled.append(sock)
        started = time.monotonic()
        time.sleep(NETWORK_TIMEOUT + ACSE_TIMEOUT + 1)
        echo = run_echoscu(LOCALHOST, target.port, called_ae=AE, timeout=15)
        deadline = started + NETWORK_TIMEOUT + ACSE_TIMEOUT + 2
        open_before = [s for s in stalled
                       if not pdus.drain(s, max(0.01, deadline - time.monotonic()))[1]]
        open_after = not pdus.drain(established.sock, 0.01)[1]
        assert echo.returncode == 0 and not open_before and not open_after, (
            f"echoscu rc {echo.returncode} {echo.stderr.strip()!r}; still open: "
            f"{len(open_before)} of {len(stalled)} stalled before associating, "
            f"{int(open_after)} of 1 stalled after")
        dropped = "dicom_router_connections_dropped_total"
        assert target.router.metric(dropped, reason="request_timeout") >= 1
        assert target.router.metric(dropped, reason="network_timeout") >= 1
    finally:
        for sock in stalled:
            sock.close()
        established.close()


def _stream_and_watch(t: Target, sock: socket.socket, chunks: Iterator[bytes]) -> tuple[int, int]:
    """Send chunks while sampling the acceptor's RSS; (MB sent, peak RSS growth in kB)."""
    baseline = rss_kb(t.acceptor_pid)
    peak, sent = baseline, 0
    try:
        for chunk in chunks:
            sock.sendall(chunk)
            sent += len(chunk)
            peak = max(peak, rss_kb(t.acceptor_pid))
    except OSError:
        pass  # the router gave up on the connection: what a fix would do
    last = -1  # the router may still be reading what the kernel buffered: watch it settle
    for _ in range(40):
        now = rss_kb(t.acceptor_pid)
        peak = max(peak, now)
        if now == last:
            break
        last = now
        time.sleep(0.1)
    return sent >> 20, peak - baseline


STREAM_MB = 128
STREAM_LIMIT_KB = 32 * 1024


def _stream_first_pdu_huge(conn: pdus.RawAssociation) -> Iterator[bytes]:
    yield struct.pack(">BBI", pdus.A_ASSOCIATE_RQ, 0, 0xFFFFFFF0)
    for _ in range(STREAM_MB):
        yield b"\x00" * (1 << 20)


def _stream_p_data_huge(conn: pdus.RawAssociation) -> Iterator[bytes]:
    conn.associate()
    yield struct.pack(">BBI", pdus.P_DATA_TF, 0, 0xFFFFFFF0)
    for _ in range(STREAM_MB):
        yield b"\x00" * (1 << 20)


def _stream_endless_command(conn: pdus.RawAssociation) -> Iterator[bytes]:
    conn.associate()
    fragment = pdus.p_data_tf([pdus.pdv(1, b"\x00" * 16000, command=True, last=False)])
    for _ in range(STREAM_MB * 16):
        yield fragment * 4


def _stream_endless_echo_dataset(conn: pdus.RawAssociation) -> Iterator[bytes]:
    conn.associate()
    echo_with_dataset = pdus.command_set({0x00000002: pdus.VERIFICATION.encode(),
                                          0x00000100: b"\x30\x00", 0x00000110: b"\x01\x00",
                                          0x00000800: b"\x00\x00"})
    yield pdus.p_data_tf([pdus.pdv(1, echo_with_dataset, command=True)])
    fragment = pdus.p_data_tf([pdus.pdv(1, b"\x00" * 16000, command=False, last=False)])
    for _ in range(STREAM_MB * 16):
        yield fragment * 4


# Regression (pynetdicom era, kept for the engine): Nothing bounds what the acceptor buffers
# in memory for one association. pynetdicom's DUL (dul.py _read_pdu_data ->
# transport.AssociationSocket.recv(pdu_length)) accumulates a PDU of whatever length the peer
# declares (up to 4 GiB, for P-DATA-TF far beyond the max_pdu the router advertised), and
# DIMSEMessage.decode_msg keeps a command set that never gets its last fragment, or the
# dataset of any non-C-STORE message (e.g. a C-ECHO-RQ saying a dataset follows), in a
# BytesIO. Streaming 128 MB grows the acceptor's RSS by about as much; a few connections
# exhaust the host's memory.


@pytest.mark.parametrize("stream", [_stream_first_pdu_huge, _stream_p_data_huge,
                                    _stream_endless_command, _stream_endless_echo_dataset],
                         ids=["huge-associate-rq", "huge-p-data", "endless-command-set",
                              "endless-echo-dataset"])
def test_memory_is_bounded_while_streaming(
    target: Target, stream: Callable[[pdus.RawAssociation], Iterator[bytes]]
) -> None:
    with pdus.RawAssociation(LOCALHOST, target.port, timeout=10) as conn:
        sent_mb, growth_kb = _stream_and_watch(target, conn.sock, stream(conn))
    assert_acceptor_alive(target)
    assert growth_kb < STREAM_LIMIT_KB, (
        f"the acceptor's RSS grew by {growth_kb >> 10} MB while {sent_mb} MB were streamed")


# Regression (pynetdicom era, kept for the engine): router/acceptor/main.py: with
# chunked receive
# pynetdicom writes each C-STORE dataset to a NamedTemporaryFile(delete=False) in
# spool/incoming (DIMSEMessage.decode_msg) and only unlinks it after EVT_C_STORE ran
# (service_class.py). When the association ends before the last fragment (abrupt close,
# A-ABORT, network timeout) or decoding the command fails after the file was created (a
# C-STORE-RQ without Affected SOP Class UID), the partial file stays in spool/incoming until
# the router restarts: disk leaks with every aborted transfer, and a peer can fill the spool
# until the disk watermark refuses all stores.


def test_aborted_stores_leave_no_partial_files(target: Target) -> None:
    before = incoming_files(target.router)
    store = pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, pdus.c_store_rq("1.2.3.4.5.6"),
                                     command=True)])
    partial = pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, b"\x00" * 20000, command=False,
                                       last=False)])
    no_sop_class = pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, pdus.command_set({
        0x00000100: b"\x01\x00", 0x00000110: b"\x01\x00", 0x00000800: b"\x00\x00"}),
        command=True)])
    attack(target, [store, partial], ending="close", associate=True, name="partial store")
    attack(target, [store, partial, pdus.a_abort()], ending="linger", associate=True,
           name="partial store")
    attack(target, [no_sop_class, partial], ending="linger", associate=True,
           name="partial store")
    gone = wait_for(lambda: not incoming_files(target.router) - before, timeout=4)
    assert gone, f"left in spool/incoming: {sorted(incoming_files(target.router) - before)}"


# A second router with the default acse_timeout (30 s) and a per-calling-AE limit.
@pytest.fixture(scope="module")
def default_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    workdir = tmp_path_factory.mktemp("fuzz-router-defaults")
    config = fuzz_config(workdir)
    config["listen"] = {"max_associations_per_calling_ae": 2, "max_pending_per_source": 128}
    with RouterProcess(workdir, config) as router:
        yield router


# Regression (pynetdicom era, kept for the engine): router/acceptor/association_events.py
# AssociationEvents.on_closed relies on EVT_CONN_CLOSE, which pynetdicom fires only from
# state-machine actions. When an exception is raised while a PDU is processed (here a command
# set of 40 zero bytes that does not decode: 'Exception in DUL.run(), aborting association'),
# DUL.run_reactor sends an A-ABORT and stops, and Association.run_reactor closes the socket
# with server.shutdown_request(): EVT_CONN_CLOSE never fires. dicom_router_associations_active
# never comes down and AccessPolicy._active keeps the calling AE's count: after
# max_associations_per_calling_ae such associations (from anyone claiming that AE title) the
# real sender is rejected until the acceptor restarts.


def test_associations_ended_by_a_decode_error_are_uncounted(default_router: RouterProcess
                                                            ) -> None:
    undecodable = pdus.p_data_tf([pdus.pdv(1, b"\x00" * 40, command=True)])
    for _ in range(2):
        with pdus.RawAssociation(LOCALHOST, default_router.port) as conn:
            conn.associate(calling_ae="MODALITY1")
            conn.send(undecodable)
            assert pdus.drain(conn.sock, 3)[1], "the router did not close the connection"
    active = default_router.metric_sum("dicom_router_associations_active")
    echo = run_echoscu(LOCALHOST, default_router.port, called_ae=AE, calling_ae="MODALITY1")
    assert echo.returncode == 0 and active == 0, (
        f"associations_active {active} with no association open; echoscu as MODALITY1: "
        f"rc {echo.returncode} {echo.stderr.strip()!r}")


# Regression (pynetdicom era, kept for the engine): pynetdicom's Association.run_reactor
# (acceptor) waits dul.receive_pdu(timeout=acse_timeout) for the A-ASSOCIATE-RQ even after the
# peer closed the connection (the DUL is back in Sta1), and AE.active_associations counts that
# thread until then. Every TCP connection closed before a complete A-ASSOCIATE-RQ (port scans,
# load-balancer health checks, the truncated requests here) holds one of
# listen.max_associations for listen.acse_timeout (30 s): 64 connect+close in ~2 s lock every
# sender out for 30 s.


def test_closing_before_associating_frees_the_slot(default_router: RouterProcess) -> None:
    for _ in range(MAX_ASSOCIATIONS):
        socket.create_connection((LOCALHOST, default_router.port)).close()
        time.sleep(0.005)
    echo = run_echoscu(LOCALHOST, default_router.port, called_ae=AE, timeout=15)
    assert echo.returncode == 0, f"echoscu: {echo.stderr.strip()!r}"
