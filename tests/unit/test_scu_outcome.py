"""router/dicom/scu_outcome.py: why a pynetdicom SCU association was not established."""

from __future__ import annotations

import logging

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE

from router.dicom.net import NegotiationEchoes
from router.dicom.scu_outcome import failure_from_association, mark_connected, recover_rejection


class _Opened:
    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc


def _rejected_but_unread() -> Association:
    """As pynetdicom 3.0.4 leaves an association whose peer rejected at once: the DUL queued
    the A-ASSOCIATE-RJ and closed the transport, and the negotiating thread, finding the
    transport closed, aborted without reading it."""
    assoc = Association(AE(), "requestor")
    rejection = A_ASSOCIATE()
    rejection.result, rejection.result_source, rejection.diagnostic = 0x01, 0x01, 0x07
    assoc.dul.to_user_queue.put(rejection)
    assoc.is_aborted = True
    mark_connected(_Opened(assoc))
    return assoc


def test_a_rejection_left_unread_is_a_rejection_not_an_abort() -> None:
    assoc = _rejected_but_unread()
    recover_rejection(assoc)
    assert assoc.is_rejected and not assoc.is_aborted
    assert assoc.acceptor.primitive.diagnostic == 0x07  # called AE title not recognised
    failure = failure_from_association(_rejected_but_unread(), "pacs", "1.2", "1.2.840.10008.1.2")
    assert failure.reason == "rejected" and not failure.transient
    assert str(failure) == "pacs rejected the association: rejected permanent, by service " \
        "user: called AE title not recognised (result 1, source 1, reason 7)"


def test_nothing_queued_leaves_an_abort_an_abort() -> None:
    assoc = Association(AE(), "requestor")
    assoc.is_aborted = True
    recover_rejection(assoc)
    assert assoc.is_aborted and not assoc.is_rejected


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("pynetdicom.acse", level, "acse.py", 1, message, None, None)


def test_pynetdicoms_errors_for_a_rejected_or_aborted_request_are_dropped() -> None:
    """The router says these itself (a busy upstream is normal life; an upstream that did not
    answer within the ACSE timeout: test_an_abort_at_the_acse_timeout_is_the_peers_silence);
    everything else stays."""
    quiet = NegotiationEchoes()
    for message in ("Association Rejected", "Result: Rejected Transient, Source: Service User",
                    "Reason: Local limit exceeded", "Association Aborted"):
        assert not quiet.filter(_record(logging.ERROR, message)), message
    assert not quiet.filter(_record(
        logging.ERROR, "ACSE timeout reached while waiting for response to association request"))
    for message in ("ACSE timeout reached while waiting for response to release request",
                    "No accepted presentation contexts",
                    "Received an invalid A-ASSOCIATE response from the peer"):
        assert quiet.filter(_record(logging.ERROR, message)), message
    assert quiet.filter(_record(logging.INFO, "Association Aborted"))


def _aborted_while_connected() -> Association:
    assoc = Association(AE(), "requestor")
    assoc.is_aborted = True
    mark_connected(_Opened(assoc))
    return assoc


def test_an_abort_at_the_acse_timeout_is_the_peers_silence() -> None:
    """pynetdicom aborts an association request itself when its ACSE timeout runs out: the
    relay said "pacs aborted the association" of a PACS that never answered (its backlog
    full, a firewall dropping the flow), sending the operator after the wrong fault."""
    silent = failure_from_association(_aborted_while_connected(), "pacs", "1.2", "",
                                      silent_for=(30.2, 30.0))
    assert str(silent) == "pacs did not answer the association request within 30 s"
    assert silent.reason == "aborted" and silent.transient
    early = failure_from_association(_aborted_while_connected(), "pacs", "1.2", "",
                                     silent_for=(0.3, 30.0))
    assert str(early) == "pacs aborted the association"
