"""The acceptor's read guards, against a socketpair and stand-ins for pynetdicom's objects."""

from __future__ import annotations

import queue
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom.pdu_primitives import P_DATA

from router.dicom.guarded_transport import (
    MAX_COMMAND_SET_BYTES,
    GuardedSocket,
    MessageGuard,
    ReadLimits,
    discard_partial_message,
)

LIMITS = ReadLimits(request_timeout=0.3, network_timeout=0.3, max_pdu=16384,
                    max_message_bytes=100_000)


def fake_assoc() -> Any:
    dul = SimpleNamespace(event_queue=queue.Queue(), to_user_queue=queue.Queue())
    dimse = SimpleNamespace(message=None, receive_primitive=None)
    return SimpleNamespace(dul=dul, dimse=dimse,
                           requestor=SimpleNamespace(address="127.0.0.1", ae_title="MOD",
                                                     primitive=None),
                           # RouterAssociation's own fields (router/dicom/relay_association.py)
                           router_progress=None, router_dataset_truncated=False,
                           router_disk_full=False)


@pytest.fixture
def pair() -> Iterator[tuple[GuardedSocket, socket.socket, Any]]:
    ours, peer = socket.socketpair()
    assoc = fake_assoc()
    guarded = GuardedSocket(assoc, ours, LIMITS)
    yield guarded, peer, assoc
    ours.close()
    peer.close()


def woken(assoc: Any) -> bool:
    try:
        return assoc.dul.to_user_queue.get_nowait() is None
    except queue.Empty:
        return False


def test_a_complete_pdu_is_read_whole(pair: tuple[GuardedSocket, socket.socket, Any]) -> None:
    guarded, peer, assoc = pair
    body = b"x" * 20000
    peer.sendall(struct.pack(">BBL", 1, 0, len(body)) + body)
    assert bytes(guarded.recv(6)) == struct.pack(">BBL", 1, 0, len(body))
    assert bytes(guarded.recv(len(body))) == body
    assert not woken(assoc)  # the A-ASSOCIATE-RQ is in: the acceptor goes on


def test_a_declared_length_past_the_limit_is_refused(
    pair: tuple[GuardedSocket, socket.socket, Any]
) -> None:
    guarded, peer, assoc = pair
    peer.sendall(struct.pack(">BBL", 1, 0, LIMITS.max_other_pdu + 1))
    assert guarded.recv(6) == bytearray()  # a short read: the DUL treats it as closed
    assert woken(assoc)


def test_p_data_may_be_up_to_twice_max_pdu() -> None:
    assert LIMITS.pdu_limit(0x04) == 2 * LIMITS.max_pdu
    assert LIMITS.pdu_limit(0x01) == LIMITS.max_other_pdu


def test_a_half_sent_associate_rq_is_dropped_after_acse_timeout(
    pair: tuple[GuardedSocket, socket.socket, Any]
) -> None:
    guarded, peer, assoc = pair
    peer.sendall(struct.pack(">BBL", 1, 0, 100) + b"partial")
    guarded.recv(6)
    assert len(guarded.recv(100)) < 100  # returns once acse_timeout has passed
    assert woken(assoc)


def test_a_connection_closed_before_associating_wakes_the_acceptor(
    pair: tuple[GuardedSocket, socket.socket, Any]
) -> None:
    guarded, peer, assoc = pair
    peer.sendall(b"\x01\x00")
    peer.close()
    assert len(guarded.recv(6)) == 2
    assert woken(assoc)
    assert not woken(assoc)  # once is enough


def test_silence_mid_pdu_after_association_ends_the_read(
    pair: tuple[GuardedSocket, socket.socket, Any]
) -> None:
    guarded, peer, assoc = pair
    peer.sendall(struct.pack(">BBL", 1, 0, 4) + b"rqrq")
    guarded.recv(6)
    guarded.recv(4)
    assoc.requestor.primitive = object()  # the association thread took the request
    peer.sendall(struct.pack(">BBL", 4, 0, 1000) + b"half")
    guarded.recv(6)
    assert len(guarded.recv(1000)) < 1000  # given up after network_timeout of silence
    assert not woken(assoc)  # associated: the acceptor's own abort path applies


def test_an_unknown_pdu_type_stops_all_reading(
    pair: tuple[GuardedSocket, socket.socket, Any]
) -> None:
    """The 12-byte attack: pynetdicom skips an unknown PDU's body, and the next header
    declares 3 GiB. Nothing after the unknown header is read, nothing is allocated."""
    guarded, peer, assoc = pair
    peer.sendall(bytes.fromhex("000000000000" + "0700C0000000"))
    assert bytes(guarded.recv(6)) == bytes(6)  # pynetdicom answers it with an A-ABORT
    assert guarded.recv(6) == bytearray()  # then sees the connection closed
    assert woken(assoc)


def test_a_read_out_of_step_is_refused(pair: tuple[GuardedSocket, socket.socket, Any]) -> None:
    guarded, peer, assoc = pair
    peer.sendall(struct.pack(">BBL", 1, 0, 10) + b"x" * 10)
    guarded.recv(6)
    assert guarded.recv(0xC0000000) == bytearray()  # never allocated, whatever is asked
    assert woken(assoc)


def test_a_complete_request_that_never_reaches_the_acceptor_frees_it_on_close(
    pair: tuple[GuardedSocket, socket.socket, Any]
) -> None:
    """A whole A-ASSOCIATE-RQ that does not decode: pynetdicom aborts in the DUL and the
    association thread never gets a request; the close must still wake it."""
    guarded, peer, assoc = pair
    peer.sendall(bytes.fromhex("0100000000080200000001010500"))
    guarded.recv(6)
    guarded.recv(8)
    assert not woken(assoc)
    guarded.close()
    assert woken(assoc)


def p_data(*pdvs: tuple[int, bytes]) -> P_DATA:
    primitive = P_DATA()  # pynetdicom's own: its setter checks what the guard writes back
    primitive.presentation_data_value_list = [[1, bytes([h]) + d] for h, d in pdvs]
    return primitive


class Recorder:
    def __init__(self, assoc: Any, complete_after: int = 0) -> None:
        self.assoc, self.calls, self.complete_after = assoc, 0, complete_after

    def __call__(self, primitive: Any) -> None:
        self.calls += 1
        if self.calls == self.complete_after:
            self.assoc.dimse.message = None  # pynetdicom's sign that a message is complete
        elif self.assoc.dimse.message is None:
            self.assoc.dimse.message = SimpleNamespace()  # a message in progress


def guard_with(assoc: Any, complete_after: int = 0) -> tuple[MessageGuard, Recorder]:
    recorder = Recorder(assoc, complete_after)
    assoc.dimse.receive_primitive = recorder
    return MessageGuard(assoc, LIMITS), recorder


def test_an_endless_command_set_aborts_the_association() -> None:
    assoc = fake_assoc()
    guard, recorder = guard_with(assoc)
    fragment = p_data((0x01, b"\x00" * 16000))
    for _ in range(MAX_COMMAND_SET_BYTES // 16000):
        guard(fragment)
    assert assoc.dul.event_queue.empty()
    guard(fragment)
    assert assoc.dul.event_queue.get_nowait() == "Evt19"  # A-ABORT through the state machine
    calls = recorder.calls
    guard(fragment)
    assert recorder.calls == calls  # nothing more is assembled


def test_an_in_memory_dataset_is_bounded_by_max_message_bytes() -> None:
    assoc = fake_assoc()
    guard, _ = guard_with(assoc)
    guard(p_data((0x03, b"\x00" * 100)))
    for _ in range(10):  # exactly max_message_bytes
        guard(p_data((0x00, b"\x00" * 10_000)))
    assert assoc.dul.event_queue.empty()
    guard(p_data((0x00, b"\x00" * 10_000)))
    assert assoc.dul.event_queue.get_nowait() == "Evt19"


def test_counts_start_again_with_each_message() -> None:
    assoc = fake_assoc()
    guard, _ = guard_with(assoc, complete_after=1)
    guard(p_data((0x03, b"\x00" * 100), (0x02, b"\x00" * 90_000)))
    assert guard.dataset_bytes == 0 and guard.command_bytes == 0
    guard(p_data((0x00, b"\x00" * 90_000)))
    assert assoc.dul.event_queue.empty()


def test_a_store_dataset_on_disk_is_not_counted(tmp_path: Path) -> None:
    assoc = fake_assoc()
    guard, _ = guard_with(assoc)
    assoc.dimse.message = SimpleNamespace(_data_set_file=object())
    for _ in range(20):
        guard(p_data((0x00, b"\x00" * 10_000)))
    assert assoc.dul.event_queue.empty()


def test_the_partial_file_of_an_unfinished_store_is_removed(tmp_path: Path) -> None:
    partial = tmp_path / "incoming.dcm"
    handle = partial.open("wb")
    handle.write(b"half a dataset")
    assoc = fake_assoc()
    assoc.dimse.message = SimpleNamespace(_data_set_file=handle, _data_set_path=partial)
    discard_partial_message(assoc)
    assert handle.closed and not partial.exists()
    discard_partial_message(assoc)  # twice is harmless


def test_a_store_dataset_past_max_dataset_bytes_is_not_written() -> None:
    assoc = fake_assoc()
    received: list[bytes] = []
    assoc.dimse.message = SimpleNamespace(_data_set_file=object())

    def receive(primitive: Any) -> None:
        received.extend(data for _, data in primitive.presentation_data_value_list)

    assoc.dimse.receive_primitive = receive
    guard = MessageGuard(assoc, ReadLimits(request_timeout=1, network_timeout=1, max_pdu=16384,
                                           max_dataset_bytes=15_000))
    guard(p_data((0x00, b"a" * 10_000)))
    guard(p_data((0x00, b"b" * 10_000)))
    guard(p_data((0x02, b"c" * 10_000)))
    assert received == [b"\x00" + b"a" * 10_000, b"\x00", b"\x02"]  # flags kept, payload not
    assert assoc.router_dataset_truncated is True
    assert assoc.dul.event_queue.empty()  # the sender still gets its answer (0xC003)
