"""What a failed association becomes (router/dicom/store_sender.py): busy or not, and the
DeliveryError kind the broker acts on. The same cases against real peers:
tests/integration/test_store_sender.py."""

from __future__ import annotations

import errno
import ssl
from pathlib import Path

import pytest

from router.core.failures import DESTINATION_FAILURES
from router.dicom.engine import AssociateRJ
from router.dicom.store_failures import AssociationFailed, StoreFailed
from router.dicom.store_sender import classify, is_busy_answer, store_failure, unsent


def tls_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason  # set by OpenSSL on a real one
    return error


def failed(kind: str = "rejected", *, connected: bool = True, rj: AssociateRJ | None = None,
           waited: float = 0.1, tls: ssl.SSLError | None = None) -> AssociationFailed:
    return AssociationFailed(kind, "x", connected=connected, rejection=rj,  # type: ignore[arg-type]
                             waited=waited, tls_error=tls)


@pytest.mark.parametrize(("rj", "busy"), [
    (AssociateRJ(2, 1, 1), True),  # transient, whatever the reason
    (AssociateRJ(1, 3, 2), True),  # local limit exceeded
    (AssociateRJ(1, 3, 1), True),  # temporary congestion
    (AssociateRJ(1, 1, 7), False),  # called AE title not recognized
])
def test_rejections_that_mean_busy(rj: AssociateRJ, busy: bool) -> None:
    assert is_busy_answer(failed(rj=rj), wait=3.0) is busy


def test_silence_is_busy_only_after_the_whole_wait_and_only_when_connected() -> None:
    assert is_busy_answer(failed("no_answer", waited=2.9), wait=3.0)
    assert not is_busy_answer(failed("no_answer", waited=1.0), wait=3.0)
    assert not is_busy_answer(failed("closed", waited=3.0), wait=3.0)
    assert not is_busy_answer(failed("connection", connected=False), wait=3.0)


@pytest.mark.parametrize(("failure", "kind", "transient"), [
    (failed("connection", connected=False), "connection", True),
    (failed(rj=AssociateRJ(1, 1, 7)), "rejected", False),
    (failed(rj=AssociateRJ(2, 3, 1)), "rejected", True),
    (failed("aborted"), "aborted", True),
    (failed("closed"), "aborted", True),
    (failed("no_answer"), "aborted", True),
    (failed("no_context"), "no_context", False),
    (failed("tls", connected=False, tls=tls_error("WRONG_VERSION_NUMBER")), "tls", True),
])
def test_each_failure_has_its_kind(failure: AssociationFailed, kind: str,
                                   transient: bool) -> None:
    error = classify(failure, "pacs", "1.2.3", "1.2.840.10008.1.2.1")
    assert (error.reason, error.transient) == (kind, transient)


@pytest.mark.parametrize(("rj", "words"), [
    (AssociateRJ(2, 3, 2), "pacs rejected the association: rejected transient, by service "
     "provider (presentation): local limit exceeded (result 2, source 3, reason 2)"),
    (AssociateRJ(1, 1, 7), "pacs rejected the association: rejected permanent, by service "
     "user: called AE title not recognised (result 1, source 1, reason 7)"),
    (AssociateRJ(1, 1, 9), "pacs rejected the association: (result 1, source 1, reason 9)"),
])
def test_a_rejection_is_said_in_words_an_operator_reads(rj: AssociateRJ, words: str) -> None:
    """The C-STORE path said "(result 1, source 1, reason 7)" where the relays (pynetdicom)
    said what it meant: the same words on both, the codes kept; a reserved code stays codes."""
    assert str(classify(failed(rj=rj), "pacs", "1.2.3", "1.2.840.10008.1.2.1")) == words


@pytest.mark.parametrize(("kind", "reason", "during_store"), [
    ("aborted", "aborted", True),  # A-ABORT, close, reset, broken pipe under a C-STORE
    ("protocol", "protocol", True),  # a wrong Message ID, bytes that break the protocol
    ("timeout", "dimse_timeout", False),  # silence: retried per instance
    ("max_pdu", "max_pdu", False),  # the destination's fault, whatever the instance
])
def test_each_store_failure_has_its_kind(kind: str, reason: str, during_store: bool) -> None:
    error = store_failure(StoreFailed(kind, "x"), "pacs")  # type: ignore[arg-type]
    assert (error.reason, error.transient, error.during_store) == (reason, True, during_store)
    assert error.reason in DESTINATION_FAILURES or error.reason == "dimse_timeout"


@pytest.mark.parametrize(("code", "reason"), [
    (errno.EHOSTUNREACH, "connection"), (errno.ENETUNREACH, "connection"),
    (errno.EIO, "spool_read"), (errno.EBADF, "spool_read")])
def test_an_oserror_under_a_store_is_the_network_or_the_spool_file(code: int,
                                                                   reason: str) -> None:
    """A read error of the spooled file was 'connection': the destination backed off and
    the job went back to the front of its queue, for ever. It is this job's now."""
    error = unsent(OSError(code, "x"), "pacs", Path("job.dcm"))
    assert (error.reason, error.transient) == (reason, True)
    assert (error.reason in DESTINATION_FAILURES) is (reason == "connection")
