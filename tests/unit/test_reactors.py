"""The event-driven association loops: their wake-ups, and a real association through them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router.dicom import reactors
from router.dicom.reactors import Waker, WakingQueue


def test_a_put_wakes_both_threads() -> None:
    waker = Waker()
    queue = WakingQueue(waker)
    queue.put("primitive")
    assert waker.event.is_set()
    started = time.monotonic()
    waker.wait_for_socket(None, timeout=5)  # returns at once: the pipe holds a wake
    assert time.monotonic() - started < 1
    waker.close()
    waker.wake()  # after close: harmless


def test_data_on_the_socket_ends_the_wait() -> None:
    waker = Waker()
    ours, peer = socket.socketpair()
    peer.sendall(b"x")
    started = time.monotonic()
    waker.wait_for_socket(ours, timeout=5)
    assert time.monotonic() - started < 1
    for sock in (ours, peer):
        sock.close()
    waker.close()


def test_a_quiet_wait_lasts_its_timeout() -> None:
    waker = Waker()
    started = time.monotonic()
    waker.wait_for_socket(None, timeout=0.2)
    assert time.monotonic() - started >= 0.15
    waker.close()


@pytest.fixture
def echo_scp() -> Iterator[int]:
    assert reactors.install()
    ae = AE(ae_title="ECHO-SCP")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_ECHO, lambda event: 0x0000)])
    assert server is not None
    yield server.server_address[1]
    server.shutdown()


def test_associations_run_on_the_event_driven_loops(echo_scp: int) -> None:
    """Echo, release and abort between two pynetdicom ends, both on the replaced loops."""
    ae = AE(ae_title="ECHO-SCU")
    ae.add_requested_context(Verification)
    for _ in range(30):
        assoc = ae.associate("127.0.0.1", echo_scp)
        assert assoc.is_established
        assert hasattr(assoc, "_router_waker")
        assert all(assoc.send_c_echo().Status == 0x0000 for _ in range(20))
        assoc.release()
        assert assoc.is_released
    aborted = ae.associate("127.0.0.1", echo_scp)
    aborted.abort()
    assert aborted.is_aborted
    deadline = time.monotonic() + 5
    while _association_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _association_threads(), "association threads did not end"


def _association_threads() -> list[threading.Thread]:
    from pynetdicom.association import Association

    return [t for t in threading.enumerate() if isinstance(t, Association)]


def _p_data(size: int) -> Any:
    from pynetdicom.pdu_primitives import P_DATA

    primitive = P_DATA()
    primitive.presentation_data_value_list = [[1, b"\x00" * size]]
    return primitive


def test_p_data_waits_for_room_while_the_dul_runs() -> None:
    from pynetdicom.pdu_primitives import A_ABORT

    waker = Waker()
    queue = WakingQueue(waker, pdata_limit=1000, consumer_alive=lambda: True)
    queue.put(_p_data(600))
    queue.put(_p_data(600))  # room was left before it: it goes in
    queue.put(A_ABORT())  # never waits: an abort must always get through
    third = threading.Thread(target=queue.put, args=(_p_data(600),), daemon=True)
    third.start()
    third.join(0.3)
    assert third.is_alive()  # held back: 1200 bytes queued, the limit is 1000
    queue.get()
    queue.get()
    third.join(2)
    assert not third.is_alive() and queue.qsize() == 2 and queue.pdata_bytes == 600
    waker.close()


def test_p_data_does_not_wait_for_a_dul_that_is_gone() -> None:
    waker = Waker()
    queue = WakingQueue(waker, pdata_limit=100, consumer_alive=lambda: False)
    for _ in range(3):
        queue.put(_p_data(600))  # nobody will take them: waiting would hang the sender
    assert queue.qsize() == 3
    waker.close()
