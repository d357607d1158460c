"""pynetdicom's reactor thread must never take the response a send_c_*() call waits for
(router/dicom/net.leave_responses_to_callers): the race that lost a C-STORE response now
and then in `dicom-router send` on a busy machine."""

from __future__ import annotations

import threading
import time
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE

from router.dicom.net import leave_responses_to_callers

CT = "1.2.840.10008.5.1.4.1.1.2"


def _dimse() -> Any:
    ae = AE()
    ae.dimse_timeout = 5  # a blocking read that finds nothing fails the test in 5 s
    dimse = Association(ae, "requestor").dimse
    leave_responses_to_callers(dimse)
    return dimse


def _store_response(msg_id: int) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.3.4"
    rsp.Status = 0x0000
    return rsp


def _echo_request() -> C_ECHO:
    req = C_ECHO()
    req.MessageID = 7
    req.AffectedSOPClassUID = "1.2.840.10008.1.1"
    return req


def test_the_reactors_read_leaves_a_response_for_the_waiting_call() -> None:
    dimse: Any = _dimse()
    dimse.msg_queue.put((1, _store_response(1)))

    assert dimse.get_msg(block=False) == (None, None)  # the reactor's read
    cx_id, rsp = dimse.get_msg(block=True)  # send_c_store's read
    assert cx_id == 1 and rsp.MessageIDBeingRespondedTo == 1


def test_the_reactor_still_takes_a_request_to_serve() -> None:
    dimse: Any = _dimse()
    dimse.msg_queue.put((3, _echo_request()))

    cx_id, req = dimse.get_msg(block=False)

    assert cx_id == 3 and req.MessageID == 7
    assert dimse.msg_queue.empty()


def test_an_aborts_wake_up_is_left_for_the_waiting_call() -> None:
    dimse: Any = _dimse()
    dimse.msg_queue.put((None, None))  # what an abort from another thread puts (send_client)

    assert dimse.get_msg(block=False) == (None, None)
    assert dimse.msg_queue.qsize() == 1


def test_a_response_arriving_while_the_reactor_polls_reaches_the_call() -> None:
    """The race itself: a reactor that did not pause polls the queue while the response
    arrives from the network thread; the call blocked on the queue must still get it."""
    dimse: Any = _dimse()
    stop = threading.Event()
    stolen: list[object] = []

    def reactor() -> None:
        while not stop.is_set():
            _, msg = dimse.get_msg(block=False)
            if msg is not None:
                stolen.append(msg)

    def network(msg_id: int) -> None:
        time.sleep(0.001)  # the call is blocked on the queue by now
        dimse.msg_queue.put((1, _store_response(msg_id)))

    thread = threading.Thread(target=reactor, daemon=True)
    thread.start()
    try:
        for msg_id in range(1, 51):
            threading.Thread(target=network, args=(msg_id,), daemon=True).start()
            _, rsp = dimse.get_msg(block=True)
            assert rsp is not None and rsp.MessageIDBeingRespondedTo == msg_id, stolen
    finally:
        stop.set()
        thread.join(5)
    assert stolen == []
