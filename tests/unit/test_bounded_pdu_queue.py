"""`send`'s bounded PDU queue (router/dicom/bounded_pdu_queue.py), with a thread standing in for
pynetdicom's DUL."""

from __future__ import annotations

import threading

import pytest
from pynetdicom.pdu_primitives import A_ABORT, P_DATA

from router.dicom.bounded_pdu_queue import PduQueue


def test_p_data_waits_for_room_and_other_primitives_never_do() -> None:
    dul = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
    dul.start()
    pdus = PduQueue(dul, limit=2)
    pdus.put(P_DATA())
    pdus.put(P_DATA())
    blocked = threading.Thread(target=pdus.put, args=(P_DATA(),), daemon=True)
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # full: the association thread waits for the socket
    pdus.put(A_ABORT())  # an abort goes in at once
    assert isinstance(pdus.get(False), P_DATA)  # the DUL takes one: room for the third
    blocked.join(5)
    assert not blocked.is_alive()
    assert pdus.qsize() == 3


@pytest.mark.timeout(20)
def test_the_rest_of_a_message_after_the_dul_stopped_goes_at_once() -> None:
    # A second Ctrl-C aborts the association under a C-STORE whose PDUs pynetdicom still
    # cuts: each waited for room once, 0.5 s apiece, so a 200 MB file took minutes to end.
    dul = threading.Thread(target=lambda: None)
    dul.start()
    dul.join()
    pdus = PduQueue(dul, limit=1)
    pdus.put(P_DATA())
    for _ in range(1_000):
        pdus.put(P_DATA())  # nobody will send them: dropped, not waited for
    assert pdus.qsize() == 1
