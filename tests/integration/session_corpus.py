"""A mutation corpus from real sessions: what DCMTK's echoscu and storescu and pynetdicom
send, captured through a small proxy, then mutated (bit flips, byte runs, truncation,
splices, unknown PDU types followed by huge declared lengths) and replayed at the acceptor.

Used by tests/integration/test_fuzz_acceptor.py (a bounded batch) and `python -m
loadtest.fuzz` (thousands of sessions). A seed makes every mutation reproducible.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import CTImageStorage

from tests.dcmtk import LOCALHOST, run_echoscu, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration import pdus

HUGE_LENGTHS = (0xC0000000, 0xFFFFFFFF, 0x7FFFFFFF, 0x10000000)


class CaptureProxy:
    """Forwards one TCP port to the router and records what each client sent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((LOCALHOST, 0))
        self.port = self.listener.getsockname()[1]
        self.sessions: list[bytes] = []
        self.accepted = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        sent = bytearray()
        with client, socket.create_connection((LOCALHOST, self.target_port)) as upstream:
            back = threading.Thread(target=_pump, args=(upstream, client, None), daemon=True)
            back.start()
            _pump(client, upstream, sent)
            back.join(10)
        with self._lock:
            self.sessions.append(bytes(sent))

    def wait_done(self, timeout: float = 30.0) -> None:
        """Until every relayed session has ended (each is recorded at its end)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.sessions) >= self.accepted:
                    return
            time.sleep(0.05)

    def close(self) -> None:
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            if record is not None:
                record += data
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def capture(router_port: int, workdir: Path, called_ae: str = "DICOM-ROUTER") -> list[bytes]:
    """Real sessions against the router: echoscu, storescu (two syntaxes), a raw C-ECHO."""
    proxy = CaptureProxy(router_port)
    try:
        run_echoscu(LOCALHOST, proxy.port, called_ae=called_ae, timeout=30)
        instance = write_instance(workdir / "corpus", sop_class=CTImageStorage,
                                  transfer_syntax=EXPLICIT_VR_LE, size_bytes=20_000)
        run_storescu([instance], LOCALHOST, proxy.port, called_ae=called_ae, timeout=30)
        run_storescu([instance], LOCALHOST, proxy.port, called_ae=called_ae, timeout=30,
                     extra_args=["-xi"])  # proposes and sends implicit VR
        pdus.valid_echo_session(LOCALHOST, proxy.port)
        proxy.wait_done()
    finally:
        proxy.close()
    sessions = [s for s in proxy.sessions if s]
    if len(sessions) < 3:
        raise RuntimeError(f"captured only {len(sessions)} sessions through the proxy")
    return sessions


# --- mutations -------------------------------------------------------------------------


def _pdu_starts(data: bytes) -> list[int]:
    starts, at = [], 0
    while at + 6 <= len(data):
        starts.append(at)
        at += 6 + struct.unpack_from(">I", data, at + 2)[0]
    return starts or [0]


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite_run(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    at, size = rng.randrange(len(out)), rng.randint(1, 16)
    out[at:at + size] = bytes(rng.choice([0x00, 0xFF, rng.randrange(256)]) for _ in range(size))
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def corrupt_length(data: bytes, rng: random.Random) -> bytes:
    """A PDU header's length field set to a huge, near or random value."""
    out = bytearray(data)
    at = rng.choice(_pdu_starts(data))
    true_length = struct.unpack_from(">I", out, at + 2)[0]
    length = rng.choice([rng.choice(HUGE_LENGTHS), max(0, true_length + rng.randint(-8, 8)),
                         rng.randrange(1 << 32)])
    struct.pack_into(">I", out, at + 2, length)
    return bytes(out)


def unknown_pdu_then_huge(data: bytes, rng: random.Random) -> bytes:
    """The issue-16 attack inside a real session: an unknown PDU type, then a header that
    declares gigabytes, spliced in at a PDU boundary."""
    at = rng.choice(_pdu_starts(data))
    kind = rng.choice([0x00, 0x08, 0x09, 0x10, 0x80, 0xFF])
    # Mostly no body: pynetdicom skips an unknown PDU's body, so the huge header then
    # lands exactly where the next header is read (the 12-byte case of issue 16).
    body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 0, 0, 4])))
    bad = struct.pack(">BBI", kind, 0, len(body)) + body
    bad += struct.pack(">BBI", rng.randint(1, 7), 0, rng.choice(HUGE_LENGTHS))
    return data[:at] + bad + data[at:]


def splice(data: bytes, rng: random.Random) -> bytes:
    """A PDU repeated or moved: the state machine sees events out of order."""
    starts = _pdu_starts(data)
    at = rng.choice(starts)
    end = next((s for s in starts if s > at), len(data))
    chunk = data[at:end]
    where = rng.choice(starts)
    return data[:where] + chunk + data[where:]


MUTATIONS: tuple[Callable[[bytes, random.Random], bytes], ...] = (
    flip_bits, overwrite_run, truncate, corrupt_length, unknown_pdu_then_huge, splice,
)


def mutate(session: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One or two mutations of `session`; (their names, the result)."""
    names, data = [], session
    for _ in range(rng.choice([1, 1, 2])):
        mutation = rng.choice(MUTATIONS)
        names.append(mutation.__name__)
        data = mutation(data, rng) if data else data
    return "+".join(names), data


# --- replay ----------------------------------------------------------------------------


@dataclass
class Replay:
    closed: bool  # the router closed the connection within the wait
    answer_types: list[int]


def replay(port: int, data: bytes, wait: float = 0.3,
           while_open: Callable[[], None] | None = None) -> Replay:
    """Send `data` in a few writes, listen `wait` seconds for the answer, close.
    `while_open` runs after the last write, with the connection still open."""
    with socket.create_connection((LOCALHOST, port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the router may close first: allowed
            for at in range(0, len(data), 4096):
                sock.sendall(data[at:at + 4096])
        answer, closed = pdus.drain(sock, wait)
        if while_open is not None:
            while_open()
    found, _ = pdus.split_pdus(answer)
    return Replay(closed, [pdu_type for pdu_type, _ in found])
