"""What a relayed C-GET or relay-mode C-MOVE tells its requester, against pynetdicom upstreams
and targets that say what a PACS may say: the upstream's own failures, a target's warnings,
C-CANCEL, a requester that aborts, an upstream that names itself as Move Originator, late
instances of a move that ended; and a storage commitment the upstream refused.

Counts and statuses per PS3.4 C.4.2 and C.4.3: every pending response's counts add up to the
sub-operations announced, remaining never rises, a cancelled request says what was not done.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from router.core.config import parse_config
from router.relay.move_registry import MoveRegistry
from router.relay.move_targets import relay_move_notes
from tests.commitment import CommitmentRequester
from tests.dcmtk import LOCALHOST, StoreSCP, free_port
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.router_process import RouterProcess, wait_for
from tests.integration.test_relay_qr import study_matches
from tests.pki import CertificateAuthority

pytestmark = pytest.mark.integration

ROUTER_AE = "DICOM-ROUTER"
GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove
FIND = StudyRootQueryRetrieveInformationModelFind
PENDING = (0xFF00, 0xFF01)


def _files(folder: Path, count: int, sop_class: str = str(CTImageStorage)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_instance(folder, sop_class=sop_class, transfer_syntax=EXPLICIT_VR_LE,
                           size_bytes=2000) for _ in range(count)]


def _query() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = "1.2.3"
    return query


def _counts(status: Dataset) -> tuple[int, int, int, int, int]:
    """(status, remaining, completed, failed, warning); -1 for what is not there."""
    return (int(status.Status), *(int(status.get(k, -1)) for k in (
        "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
        "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")))


def _assert_pending_adds_up(answers: list[tuple[int, int, int, int, int]],
                            total: int) -> None:
    pending = [a for a in answers if a[0] in PENDING]
    assert pending, answers
    for _, remaining, completed, failed, warning in pending:
        assert remaining + completed + failed + warning == total, answers
    remaining_seen = [a[1] for a in pending]
    assert remaining_seen == sorted(remaining_seen, reverse=True), answers


def _no_traceback(router: RouterProcess) -> None:
    log = router.log()
    assert "Traceback" not in log and "failed unexpectedly" not in log, log[-3000:]


# --- upstreams ------------------------------------------------------------------------------

class Upstream:
    """A pynetdicom Q/R SCP for C-GET, C-MOVE and C-FIND; records the C-CANCEL."""

    def __init__(self, ae_title: str, files: list[Path], delay: float = 0.0,
                 honour_cancel: bool = True) -> None:
        """MR instances among `files` fail: the upstream has no context to send them on."""
        self.files, self.delay = files, delay
        self.honour_cancel = honour_cancel
        self.cancelled = threading.Event()
        self.move_to = (LOCALHOST, 0)  # the router's port, once it runs
        self.move_message_ids: list[int] = []
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_associations = 20
        for model in (GET, MOVE, FIND):
            self.ae.add_supported_context(model)
        self.ae.add_supported_context(CTImageStorage, EXPLICIT_VR_LE, scp_role=True,
                                      scu_role=True)
        self.ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
        self.port = free_port()
        self.server = self.ae.start_server((LOCALHOST, self.port), block=False, evt_handlers=[
            (evt.EVT_C_GET, self.on_get), (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_FIND, self.on_find)])

    def _instances(self, event: Any) -> Iterator[tuple[int, Any]]:
        for path in self.files:
            if event.is_cancelled and self.honour_cancel:
                self.cancelled.set()
                yield 0xFE00, None
                return
            yield 0xFF00, dcmread(path)
            time.sleep(self.delay)

    def on_get(self, event: Any) -> Iterator[Any]:
        yield len(self.files)
        yield from self._instances(event)

    def on_move(self, event: Any) -> Iterator[Any]:
        self.move_message_ids.append(int(event.request.MessageID))
        yield self.move_to
        yield len(self.files)
        yield from self._instances(event)

    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield from study_matches(event, 100, self.cancelled)

    def close(self) -> None:
        self.server.shutdown()


class Target:
    """A move destination serving one association at a time: the status for each C-STORE
    from `statuses` (cycled), the Move Originator fields it saw."""

    def __init__(self, statuses: tuple[int, ...] = (0x0000,), delay: float = 0.0) -> None:
        self.statuses, self.delay = statuses, delay
        self.received: list[str] = []
        self.originators: set[tuple[str, int]] = set()
        self.ae = AE(ae_title="TARGET")
        self.ae.maximum_associations = 1
        self.ae.add_supported_context(CTImageStorage, EXPLICIT_VR_LE)
        self.port = free_port()
        self.server = self.ae.start_server((LOCALHOST, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event: Any) -> int:
        request = event.request
        self.originators.add((str(request.MoveOriginatorApplicationEntityTitle or "").strip(),
                              int(request.MoveOriginatorMessageID or 0)))
        time.sleep(self.delay)
        self.received.append(str(request.AffectedSOPInstanceUID))
        return self.statuses[(len(self.received) - 1) % len(self.statuses)]

    def close(self) -> None:
        self.server.shutdown()


def _request_commitment(port: int, transaction: str, instance: str) -> tuple[int, str]:
    """MODALITY asks the router to commit one CT instance; the N-ACTION's status."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(LOCALHOST, port, ae_title=ROUTER_AE)
    assert assoc.is_established
    request = Dataset()
    request.TransactionUID = transaction
    item = Dataset()
    item.ReferencedSOPClassUID = str(CTImageStorage)
    item.ReferencedSOPInstanceUID = instance
    request.ReferencedSOPSequence = [item]
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                    "1.2.840.10008.1.20.1.1")
    assoc.release()
    return int(status.Status), transaction


def _router(tmp_path: Path, upstream: Upstream, target: Target | None = None,
            pacs: dict[str, Any] | None = None, **extra: Any) -> RouterProcess:
    """Queries and retrieves to `upstream` (moves relayed; `pacs` adds to its destination),
    instances pushed to the router into a folder; the target known as TARGET."""
    destinations: dict[str, Any] = {
        "pacs": {"type": "dicom", "ae_title": upstream.ae.ae_title, "host": LOCALHOST,
                 "port": upstream.port, "move_mode": "relay", **(pacs or {})},
        "archive": {"type": "folder", "path": str(tmp_path / "archive")}}
    known = {"TARGET": {"host": LOCALHOST, "port": target.port}} if target else {}
    router = RouterProcess(tmp_path / "router", {
        "destinations": destinations, "known_aes": known, "request_timeout": 30,
        "rules": [{"name": "qr", "query": ["pacs"], "forward": ["archive"]}], **extra})
    router.start()
    upstream.move_to = (LOCALHOST, router.port)
    return router


def _requester(port: int, contexts: list[Any], ae_title: str = "REQUESTER",
               on_store: Any = None) -> Any:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for context in contexts:
        ae.add_requested_context(context)
    ext_neg, handlers = [], []
    if on_store is not None:
        ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
        ext_neg = [build_role(CTImageStorage, scp_role=True)]
        handlers = [(evt.EVT_C_STORE, on_store)]
    assoc = ae.associate(LOCALHOST, port, ae_title=ROUTER_AE, ext_neg=ext_neg,
                         evt_handlers=handlers)
    assert assoc.is_established
    return assoc


def _archived(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "archive").rglob("*.dcm")) if (tmp_path / "archive").exists() \
        else []


# --- C-GET ----------------------------------------------------------------------------------

def test_c_get_counts_the_upstreams_failures_and_remaining_adds_up(tmp_path: Path) -> None:
    """An upstream that fails 2 of 10 sub-operations itself (0xB000, failed 2): the requester
    hears the same, and every pending response's counts add up to 10 (before: failed 0, and
    the first pending said remaining 0 with 7 to come)."""
    upstream = Upstream("GETQR", _files(tmp_path / "src", 2, str(MRImageStorage))
                        + _files(tmp_path / "src", 8))
    router = _router(tmp_path, upstream)
    try:
        got: list[str] = []
        assoc = _requester(router.port, [GET],
                           on_store=lambda e: (got.append(e.request.AffectedSOPInstanceUID),
                                               0x0000)[1])
        answers = [_counts(s) for s, _ in assoc.send_c_get(_query(), GET)]
        assoc.release()
        assert len(got) == 8
        assert answers[-1][0] == 0xB000 and answers[-1][2:] == (8, 2, 0), answers
        _assert_pending_adds_up(answers, 10)
    finally:
        router.stop()
        upstream.close()


def test_a_cancelled_message_id_is_free_for_the_next_c_get(tmp_path: Path) -> None:
    """pynetdicom sends every C-GET with Message ID 1: once the cancelled one ended, the
    next one is not cancelled too (before: 0xFE00 with nothing sent)."""
    upstream = Upstream("GETQR", _files(tmp_path / "src", 6), delay=0.2)
    router = _router(tmp_path, upstream)
    try:
        got: list[str] = []
        assoc = _requester(router.port, [GET],
                           on_store=lambda e: (got.append(e.request.AffectedSOPInstanceUID),
                                               0x0000)[1])
        answers = []
        for status, _ in assoc.send_c_get(_query(), GET, msg_id=1):
            answers.append(_counts(status))
            if len(answers) == 2:
                assoc.send_c_cancel(1, query_model=GET)
        assert answers[-1][0] == 0xFE00, answers
        got.clear()
        answers = [_counts(s) for s, _ in assoc.send_c_get(_query(), GET, msg_id=1)]
        assoc.release()
        assert answers[-1][0] == 0x0000 and answers[-1][2] == 6, answers
        assert len(got) == 6
    finally:
        router.stop()
        upstream.close()


def test_a_requester_that_aborts_a_c_get_is_no_error(tmp_path: Path) -> None:
    """The upstream is cancelled, the log says so in one line, without a traceback, and no
    failure status is counted as answered (before: 'relaying C-GET failed unexpectedly'
    with a traceback, 0xA701 counted)."""
    upstream = Upstream("GETQR", _files(tmp_path / "src", 40), delay=0.15)
    router = _router(tmp_path, upstream)
    try:
        assoc = _requester(router.port, [GET], on_store=lambda e: 0x0000)
        for n, _ in enumerate(assoc.send_c_get(_query(), GET)):
            if n == 2:
                assoc.abort()
                break
        assert upstream.cancelled.wait(15), "the upstream C-GET was not cancelled"
        wait_for(lambda: "went away" in router.log(), 15)
        _no_traceback(router)
        assert router.metric_sum("dicom_router_dimse_requests_total", command="C-GET") == 0
    finally:
        router.stop()
        upstream.close()


def test_a_requester_that_aborts_a_c_find_is_no_error(tmp_path: Path) -> None:
    upstream = Upstream("FINDQR", [])
    router = _router(tmp_path, upstream)
    try:
        assoc = _requester(router.port, [FIND])
        for n, _ in enumerate(assoc.send_c_find(_query(), FIND)):
            if n == 2:
                assoc.abort()
                break
        assert upstream.cancelled.wait(15), "the upstream C-FIND was not cancelled"
        wait_for(lambda: "went away" in router.log(), 15)
        _no_traceback(router)
        assert router.metric_sum("dicom_router_dimse_requests_total", command="C-FIND") == 0
    finally:
        router.stop()
        upstream.close()


def test_a_busy_upstream_is_the_routers_warning_not_pynetdicoms_errors(tmp_path: Path) -> None:
    """An upstream serving one association at a time rejects the relay's: normal life, so the
    router's WARNING says who rejected and why, and pynetdicom's three ERROR lines (before:
    "Association Rejected", "Result: ...", "Reason: ...") are not in the log."""
    upstream = Upstream("PACS", [])
    upstream.ae.maximum_associations = 1
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(FIND)
    held = holder.associate(LOCALHOST, upstream.port, ae_title="PACS")
    assert held.is_established
    router = _router(tmp_path, upstream)
    try:
        assoc = _requester(router.port, [FIND])
        statuses = [int(status.Status) for status, _ in assoc.send_c_find(_query(), FIND)]
        assoc.release()
        assert statuses[-1] not in (0x0000, *PENDING)
        log = router.log()
        assert "no upstream answered: pacs: pacs rejected the association: rejected " \
            "transient, by service provider (presentation): local limit exceeded" in log
        assert [line for line in log.splitlines() if "ERROR" in line] == []
        _no_traceback(router)
    finally:
        router.stop()
        held.release()
        upstream.close()


# --- C-MOVE, relay mode ---------------------------------------------------------------------

def _move(port: int, msg_id: int = 7, cancel_after: int = 0) -> list[tuple[int, ...]]:
    assoc = _requester(port, [MOVE], ae_title="MOVER")
    answers: list[tuple[int, ...]] = []
    for status, _ in assoc.send_c_move(_query(), "TARGET", MOVE, msg_id=msg_id):
        answers.append(_counts(status))
        if cancel_after and len(answers) == cancel_after:
            assoc.send_c_cancel(msg_id, query_model=MOVE)
    assoc.release()
    return answers


def test_a_relayed_c_move_from_an_upstream_naming_itself_as_originator(
        tmp_path: Path) -> None:
    """pynetdicom's C-MOVE SCP puts its own AE title as Move Originator: its instances still
    reach the move destination, carrying the requester's AE and message ID as pass-through
    would (PS3.7 9.1.1.1); none is taken as new work for the rules; every pending response
    adds up and the final is Success (before: all forwarded by the rule, target nothing,
    Success with 0 completed)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 10))
    target = Target()
    router = _router(tmp_path, upstream, target)
    try:
        answers = _move(router.port, msg_id=7)
        assert answers[-1][0] == 0x0000 and answers[-1][2:] == (10, 0, 0), answers
        _assert_pending_adds_up(answers, 10)
        assert len(target.received) == 10
        assert target.originators == {("MOVER", 7)}
        assert _archived(tmp_path) == []
        assert router.metric("dicom_router_instances_received_total", result="relayed") == 10
    finally:
        router.stop()
        upstream.close()
        target.close()


def test_another_sender_cannot_slip_an_instance_into_a_relayed_c_move(
        tmp_path: Path) -> None:
    """While MOVER's relayed move runs, CT2 pushes a C-STORE naming the router as Move
    Originator and the move's message ID: it is ordinary work for the rules (archived), never
    a sub-operation; TARGET gets only the upstream's 3 and MOVER is told completed 3 (before:
    TARGET got CT2's instance too and MOVER was told completed 4 of 3)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 3), delay=0.5)
    target = Target()
    router = _router(tmp_path, upstream, target)
    try:
        finals: list[tuple[int, ...]] = []
        mover = threading.Thread(target=lambda: finals.append(_move(router.port)[-1]))
        mover.start()
        wait_for(lambda: upstream.move_message_ids, 15)
        injected = dcmread(_files(tmp_path / "ct2", 1)[0])
        ae = AE(ae_title="CT2")
        ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
        assoc = ae.associate(LOCALHOST, router.port, ae_title=ROUTER_AE)
        assert assoc.is_established
        status = assoc.send_c_store(injected, originator_aet=ROUTER_AE,
                                    originator_id=upstream.move_message_ids[-1])
        assoc.release()
        mover.join(60)
        assert int(status.Status) == 0x0000
        assert finals and finals[0][0] == 0x0000 and finals[0][2:] == (3, 0, 0), finals
        assert len(target.received) == 3
        assert str(injected.SOPInstanceUID) not in target.received
        wait_for(lambda: len(_archived(tmp_path)) == 1, 15)
        _no_traceback(router)
    finally:
        router.stop()
        upstream.close()
        target.close()


def test_a_relayed_c_move_whose_upstream_stores_under_another_ae_fails_and_says_why(
        tmp_path: Path) -> None:
    """The PACS is configured as QRSCP but its C-STOREs call as MOVEQR (as Orthanc and many
    PACS do): they are ordinary work for the rules, never the move's, so the requester gets
    0xA702 with failed 3 and an ErrorComment saying the upstream's instances never arrived,
    and the log says once which AE to add to store_ae_titles (before: Success with 0
    completed, 0 failed, no warning, and the target got nothing)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 3))
    target = Target()
    router = _router(tmp_path, upstream, target, pacs={"ae_title": "QRSCP"})
    try:
        final = _move_to(router.port, "TARGET")
        assert final[0] == 0xA702 and final[2:5] == (0, 3, 0), final
        assert final[5] == "3 instance(s) QRSCP reported sent never arrived", final
        assert target.received == []
        wait_for(lambda: len(_archived(tmp_path)) == 3, 15)  # routed, not lost
        log = router.log()
        assert log.count("C-STORE from MOVEQR names relayed C-MOVE") == 1, log[-3000:]
        assert "destinations.pacs.store_ae_titles" in log
        _no_traceback(router)
    finally:
        router.stop()
        upstream.close()
        target.close()


def test_a_relayed_c_move_takes_instances_from_the_upstreams_store_ae_titles(
        tmp_path: Path) -> None:
    """The same PACS with store_ae_titles: [MOVEQR]: its instances are the move's, the
    target gets all 3 and the requester Success."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 3))
    target = Target()
    router = _router(tmp_path, upstream, target,
                     pacs={"ae_title": "QRSCP", "store_ae_titles": ["MOVEQR"]})
    try:
        final = _move_to(router.port, "TARGET")
        assert final[0] == 0x0000 and final[2:5] == (3, 0, 0), final
        assert len(target.received) == 3
        assert _archived(tmp_path) == []
        assert "store_ae_titles" not in router.log()
    finally:
        router.stop()
        upstream.close()
        target.close()


def test_a_relayed_c_moves_upstream_is_not_closed_as_silent_between_its_instances(
        tmp_path: Path) -> None:
    """network_timeout 1 s, an upstream (storing as MOVEQR, in store_ae_titles) that waits
    2.5 s after each of its 2 instances on its store association: the association stays
    open while the move does, the target gets both and the requester Success (before: closed
    as "silent for network_timeout" after the first, and the requester got 0xB000)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 2), delay=2.5)
    target = Target()
    router = _router(tmp_path, upstream, target, listen={"network_timeout": 1},
                     pacs={"ae_title": "QRSCP", "store_ae_titles": ["MOVEQR"]})
    try:
        final = _move_to(router.port, "TARGET")
        assert final[0] == 0x0000 and final[2:5] == (2, 0, 0), final
        assert len(target.received) == 2
        assert router.metric("dicom_router_connections_dropped_total",
                             reason="network_timeout") == 0
        assert "silent for network_timeout" not in router.log()
    finally:
        router.stop()
        upstream.close()
        target.close()


def test_a_relayed_c_move_counts_the_targets_warnings_and_the_upstreams_failures(
        tmp_path: Path) -> None:
    """The target answers 0xB007 to every other instance and the upstream fails one
    sub-operation itself: 0xB000 with completed 5, failed 1, warning 5 (before: completed
    10, warning 0)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 1, str(MRImageStorage))
                        + _files(tmp_path / "src", 10))
    target = Target(statuses=(0x0000, 0xB007))
    router = _router(tmp_path, upstream, target)
    try:
        answers = _move(router.port)
        assert answers[-1][0] == 0xB000 and answers[-1][2:] == (5, 1, 5), answers
        _assert_pending_adds_up(answers, 11)
    finally:
        router.stop()
        upstream.close()
        target.close()


def _move_to(port: int, destination: str) -> tuple[int, ...]:
    """The final (status, remaining, completed, failed, warning) and ErrorComment's length."""
    assoc = _requester(port, [MOVE], ae_title="MOVER")
    answers = list(assoc.send_c_move(_query(), destination, MOVE))
    assoc.release()
    last = answers[-1][0]
    return (*_counts(last), str(last.get("ErrorComment", "")))


def test_a_relayed_c_move_to_a_destination_that_de_identifies_is_refused(
        tmp_path: Path) -> None:
    """RESEARCH de-identifies and morphs what rules forward to it; a relayed C-MOVE would
    send it the upstream's files as they are. The move is refused with 0xC005 naming why,
    the upstream is never asked, nothing reaches RESEARCH, one log line says so, and
    check-config notes it; a move to PLAIN (no transforms) still delivers (before:
    RESEARCH got the patient's name and ID). IMPLICIT lists only Implicit VR LE, which the
    workers would transcode to: a relayed move's Explicit VR files fail, none is sent."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 3))
    config: dict[str, Any] = {
        "destinations": {
            "pacs": {"type": "dicom", "ae_title": "MOVEQR", "host": LOCALHOST,
                     "port": upstream.port, "move_mode": "relay"},
            "research": {"type": "dicom", "ae_title": "RESEARCH", "host": LOCALHOST,
                         "port": 0, "deidentify": {},
                         "morph": [{"action": "set", "tag": "StationName", "value": "X"}]},
            "plain": {"type": "dicom", "ae_title": "PLAIN", "host": LOCALHOST, "port": 0},
            "implicit": {"type": "dicom", "ae_title": "IMPLICIT", "host": LOCALHOST,
                         "port": 0, "transfer_syntaxes": ["ImplicitVRLittleEndian"]}},
        "rules": [{"name": "qr", "query": ["pacs"]}], "request_timeout": 30}
    with StoreSCP(tmp_path / "research", "RESEARCH") as research, \
            StoreSCP(tmp_path / "plain", "PLAIN") as plain:
        config["destinations"]["research"]["port"] = research.port
        config["destinations"]["plain"]["port"] = plain.port
        config["destinations"]["implicit"]["port"] = plain.port  # storescp takes any AE
        router = RouterProcess(tmp_path / "router", config).start()
        upstream.move_to = (LOCALHOST, router.port)
        try:
            final = _move_to(router.port, "RESEARCH")
            assert final[0] == 0xC005 and "transforms" in str(final[-1]), final
            assert upstream.move_message_ids == []
            assert router.log().count("C-MOVE to 'RESEARCH' refused") == 1
            final = _move_to(router.port, "PLAIN")
            assert final[0] == 0x0000 and final[2:5] == (3, 0, 0), final
            assert len(plain.received_files()) == 3
            final = _move_to(router.port, "IMPLICIT")
            assert final[0] == 0xA702 and final[2:5] == (0, 3, 0), final
            assert len(plain.received_files()) == 3
            assert research.received_files() == []
            _no_traceback(router)
        finally:
            router.stop()
            upstream.close()
    notes = relay_move_notes(parse_config(config))
    assert len(notes) == 1 and "'research'" in notes[0] and "RESEARCH" in notes[0], notes


def test_two_relayed_c_moves_to_a_one_association_target_both_complete(
        tmp_path: Path) -> None:
    """TARGET serves one association and rejects a second (2, 3, 2): two moves to it at once
    take turns on one association, and every instance of both arrives (before: the second
    move's every sub-operation failed, 0xA702, and none was retried)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 10), delay=0.1)
    target = Target(delay=0.05)
    router = _router(tmp_path, upstream, target)
    try:
        finals: list[tuple[int, ...]] = []
        threads = [threading.Thread(target=lambda: finals.append(_move(router.port)[-1]))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [f[0] for f in finals] == [0x0000, 0x0000], finals
        assert all(f[2:] == (10, 0, 0) for f in finals), finals
        assert len(target.received) == 20
        _no_traceback(router)
    finally:
        router.stop()
        upstream.close()
        target.close()


def test_a_relayed_c_moves_target_busy_for_a_moment_gets_every_instance(
        tmp_path: Path) -> None:
    """Someone else holds TARGET's only association as the move starts: the rejected
    sub-operation is tried again, and once that association ends every instance arrives
    (before: each instance sent while TARGET was busy failed for good)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 5))
    target = Target()
    router = _router(tmp_path, upstream, target)
    other = AE(ae_title="OTHER")
    other.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
    held = other.associate(LOCALHOST, target.port, ae_title="TARGET")
    assert held.is_established
    try:
        finals: list[tuple[int, ...]] = []
        mover = threading.Thread(target=lambda: finals.append(_move(router.port)[-1]))
        mover.start()
        wait_for(lambda: "trying again" in router.log(), 30)
        held.release()
        mover.join(60)
        assert finals and finals[0][0] == 0x0000 and finals[0][2:] == (5, 0, 0), finals
        assert len(target.received) == 5
        _no_traceback(router)
    finally:
        if held.is_established:
            held.release()
        router.stop()
        upstream.close()
        target.close()


def test_a_relayed_c_move_fails_at_once_on_a_certificate_either_side_refuses(
        tmp_path: Path) -> None:
    """Two storescp move destinations over TLS: DISTRUSTED shows a certificate from a CA the
    router does not trust, PICKY refuses the router's certificate (another CA's). Each
    sub-operation fails at once, 0xA702 with failed 3 and an ErrorComment saying why
    (before: "trying again" until request_timeout, then 0xA702 with no comment)."""
    ca = CertificateAuthority(tmp_path / "ca", "hospital-ca")
    other = CertificateAuthority(tmp_path / "other", "other-ca")
    server = ca.issue("pacs.example", dns=("localhost",), ip=LOCALHOST, server=True)
    router_client = other.issue("router-client")
    scp_tls = ["+tls", str(server.key), str(server.cert), "-pw", "+cf", str(ca.cert_path)]
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 3))
    with StoreSCP(tmp_path / "distrusted", "DISTRUSTED", extra_args=[*scp_tls, "-ic"]) as \
            distrusted, StoreSCP(tmp_path / "picky", "PICKY", extra_args=[*scp_tls, "-rc"]) \
            as picky:
        tls = {"mode": "mtls", "cert": str(router_client.cert),
               "key": str(router_client.key)}
        router = _router(tmp_path, upstream, request_timeout=10, known_aes={
            "DISTRUSTED": {"host": LOCALHOST, "port": distrusted.port,
                           "tls": {**tls, "ca": str(other.cert_path)}},
            "PICKY": {"host": LOCALHOST, "port": picky.port,
                      "tls": {**tls, "ca": str(ca.cert_path)}}})
        try:
            distrusted_final = _move_to(router.port, "DISTRUSTED")
            picky_final = _move_to(router.port, "PICKY")
            assert distrusted_final[:5] == (0xA702, -1, 0, 3, 0), distrusted_final
            assert distrusted_final[-1] == "DISTRUSTED certificate not accepted: unknown_ca"
            assert picky_final[:5] == (0xA702, -1, 0, 3, 0), picky_final
            assert str(picky_final[-1]).startswith("PICKY refused the router's certificate")
            # (A TLS 1.3 peer's alert may be lost to its reset: a close, tried again.)
            assert not [line for line in router.log().splitlines()
                        if "TLS with" in line and "trying again" in line]
            assert distrusted.received_files() == picky.received_files() == []
            _no_traceback(router)
        finally:
            router.stop()
            upstream.close()


def test_c_cancel_of_a_relayed_c_move_stops_its_deliveries(tmp_path: Path) -> None:
    """The upstream sent all 10 at once; the target takes one every 0.3 s; C-CANCEL after the
    second pending response: what was not delivered is not, and the final 0xFE00 says so
    (before: all 10 delivered, then 0xFE00 completed 10)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 10))
    target = Target(delay=0.3)
    router = _router(tmp_path, upstream, target)
    try:
        answers = _move(router.port, cancel_after=2)
        status, remaining, completed, failed, warning = answers[-1]
        assert status == 0xFE00, answers
        wait_for(lambda: not list((router.spool / "relay").iterdir()), 15)
        time.sleep(1.0)  # nothing more reaches the target after the final
        assert completed == len(target.received) < 10, answers
        assert remaining == 10 - completed and failed == warning == 0, answers
    finally:
        router.stop()
        upstream.close()
        target.close()


def test_late_instances_of_a_move_that_ended_are_refused_not_routed(tmp_path: Path) -> None:
    """After the move ended, an instance naming it (the router's AE as Move Originator, its
    message ID) gets a failure status and is no new work for the rules; a push that names
    another originator with the same message ID is ordinary work."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 2))
    target = Target()
    router = _router(tmp_path, upstream, target)
    try:
        assert _move(router.port)[-1][0] == 0x0000
        move_id = upstream.move_message_ids[-1]
        late = _files(tmp_path / "late", 2)
        ae = AE(ae_title="MOVEQR")
        ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
        assoc = ae.associate(LOCALHOST, router.port, ae_title=ROUTER_AE)
        assert assoc.is_established
        refused = assoc.send_c_store(dcmread(late[0]), originator_aet=ROUTER_AE,
                                     originator_id=move_id)
        ordinary = assoc.send_c_store(dcmread(late[1]), originator_aet="WORKSTATION",
                                      originator_id=move_id)
        assoc.release()
        assert int(refused.Status) == 0x0110
        assert int(ordinary.Status) == 0x0000
        wait_for(lambda: len(_archived(tmp_path)) == 1, 15)
        assert "came too late" in router.log()
        assert len(target.received) == 2
    finally:
        router.stop()
        upstream.close()
        target.close()


def test_a_pass_through_c_move_to_the_router_after_a_closed_relayed_move(
        tmp_path: Path) -> None:
    """A relay-mode move with message ID 1 closed a moment ago; a pass-through C-MOVE to the
    router itself follows: its instances are routed, not refused as the closed move's late
    ones (before: the pass-through asked with message ID 1 and every instance got 0x0110)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 3))
    router = RouterProcess(tmp_path / "router", {
        "destinations": {
            "pacs": {"type": "dicom", "ae_title": "MOVEQR", "host": LOCALHOST,
                     "port": upstream.port, "move_mode": "pass_through"},
            "archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "qr", "query": ["pacs"], "forward": ["archive"]}]})
    router.start()
    upstream.move_to = (LOCALHOST, router.port)
    try:
        closed = MoveRegistry(router.spool / "moves", message_ids=1)  # it can only take ID 1
        closed.close(closed.open(ROUTER_AE, "MOVEQR"))
        assoc = _requester(router.port, [MOVE])
        answers = [_counts(status) for status, _ in assoc.send_c_move(_query(), ROUTER_AE,
                                                                       MOVE)]
        assoc.release()
        assert answers[-1][:4] == (0x0000, -1, 3, 0), answers
        assert upstream.move_message_ids[-1] != 1
        wait_for(lambda: len(_archived(tmp_path)) == 3, 15)
        assert "came too late" not in router.log()
        _no_traceback(router)
    finally:
        router.stop()
        upstream.close()


def test_a_requester_that_aborts_a_relayed_c_move_is_no_error(tmp_path: Path) -> None:
    """The upstream is cancelled, its instances that still come are refused (never routed),
    the log has one line for it and no traceback."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 20), delay=0.2,
                        honour_cancel=False)
    target = Target()
    router = _router(tmp_path, upstream, target)
    try:
        assoc = _requester(router.port, [MOVE], ae_title="MOVER")
        for n, _ in enumerate(assoc.send_c_move(_query(), "TARGET", MOVE)):
            if n == 2:
                assoc.abort()
                break
        wait_for(lambda: "went away" in router.log(), 15)
        wait_for(lambda: "came too late" in router.log(), 15)
        _no_traceback(router)
        assert _archived(tmp_path) == []
        assert router.metric_sum("dicom_router_dimse_requests_total", command="C-MOVE") == 0
    finally:
        router.stop()
        upstream.close()
        target.close()


# --- storage commitment ---------------------------------------------------------------------

def test_a_storage_commitment_the_upstream_refused_is_not_pending(tmp_path: Path) -> None:
    """N-ACTION answered 0x0110 upstream: the requester hears it and commitments/ keeps
    nothing (before: kept for 24 hours, waiting for a result that never comes)."""
    upstream = AE(ae_title="PACS")
    upstream.add_supported_context(StorageCommitmentPushModel)
    port = free_port()
    server = upstream.start_server((LOCALHOST, port), block=False, evt_handlers=[
        (evt.EVT_N_ACTION, lambda e: (0x0110, None))])
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                                  "port": port}},
        "known_aes": {"MODALITY": {"host": LOCALHOST, "port": free_port()}},
        "rules": [{"name": "qr", "query": ["pacs"]}]})
    router.start()
    try:
        status, _ = _request_commitment(router.port, "1.2.826.0.1.3680043.8.498.1",
                                        "1.2.826.0.1.3680043.8.498.2")
        assert status == 0x0110
        assert list((router.spool / "commitments").iterdir()) == []
    finally:
        router.stop()
        server.shutdown()


class LateCommitmentSCP:
    """A storage commitment SCP that answers its N-ACTION `delay` seconds late, then sends
    the result to the router on an association of its own, as an archive does."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.router_port = 0
        self.report_status: int | None = None
        self.received = threading.Event()  # it holds the N-ACTION from now on
        self.reported = threading.Event()
        self.ae = AE(ae_title="PACS")
        self.ae.add_supported_context(StorageCommitmentPushModel)
        self.port = free_port()
        self.server = self.ae.start_server((LOCALHOST, self.port), block=False, evt_handlers=[
            (evt.EVT_N_ACTION, self.on_action)])

    def on_action(self, event: Any) -> tuple[int, None]:
        info = event.action_information
        self.received.set()
        time.sleep(self.delay)  # past the router's timeout: it has answered its requester
        threading.Thread(target=self.report, args=(info,), daemon=True).start()
        return 0x0000, None

    def report(self, action: Dataset) -> None:
        try:
            self.report_status = _report(self.router_port, "PACS", action)
        finally:
            self.reported.set()

    def close(self) -> None:
        self.server.shutdown()


def _report(router_port: int, calling_ae: str, action: Dataset,
            dimse_timeout: float = 30, failed: bool = False) -> int | None:
    """An N-EVENT-REPORT "all committed" for action (`failed`: "none committed"), from
    calling_ae on an association of its own; the router's status (None: no answer within
    dimse_timeout)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = dimse_timeout
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(LOCALHOST, router_port, ae_title=ROUTER_AE,
                         ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
    try:
        assert assoc.is_established
        result = Dataset()
        result.TransactionUID = action.TransactionUID
        if failed:
            result.FailedSOPSequence = copy.deepcopy(action.ReferencedSOPSequence)
            for item in result.FailedSOPSequence:
                item.FailureReason = 0x0110
        else:
            result.ReferencedSOPSequence = action.ReferencedSOPSequence
        status, _ = assoc.send_n_event_report(result, 2 if failed else 1,
                                              StorageCommitmentPushModel,
                                              "1.2.840.10008.1.20.1.1")
        return int(status.Status) if "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()


def _requester_scp(port: int, on_report: Any) -> Any:
    """The requester's SCP (AE MODALITY) on port, taking N-EVENT-REPORTs with on_report."""
    requester = AE("MODALITY")
    requester.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    return requester.start_server((LOCALHOST, port), block=False,
                                  evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])


def _committing_pacs() -> tuple[Any, int, list[Dataset]]:
    """A pynetdicom PACS (AE PACS) that takes every N-ACTION with Success and reports
    nothing by itself: its server, its port, and the N-ACTIONs' datasets as they come."""
    actions: list[Dataset] = []
    upstream = AE(ae_title="PACS")
    upstream.add_supported_context(StorageCommitmentPushModel)
    port = free_port()
    server = upstream.start_server((LOCALHOST, port), block=False, evt_handlers=[
        (evt.EVT_N_ACTION, lambda e: (actions.append(e.action_information), (0x0000, None))[1])])
    return server, port, actions


def test_a_commitment_result_from_another_ae_than_its_upstream_is_refused(
        tmp_path: Path) -> None:
    """Another peer reporting "all committed" for a pending transaction gets 0x0110 and the
    requester hears nothing of it (it would delete its copies); the upstream's own result,
    under one of its store_ae_titles, is delivered (before: the first report was relayed)."""
    server, port, actions = _committing_pacs()
    with CommitmentRequester("MODALITY") as requester:
        router = RouterProcess(tmp_path / "router", {
            "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                                      "port": port, "store_ae_titles": ["PACS_SCU"]}},
            "known_aes": {"MODALITY": {"host": LOCALHOST, "port": requester.port}},
            "rules": [{"name": "qr", "query": ["pacs"]}]})
        router.start()
        try:
            status, transaction = _request_commitment(
                router.port, "1.2.826.0.1.3680043.8.498.20", "1.2.826.0.1.3680043.8.498.21")
            assert status == 0x0000 and len(actions) == 1
            assert _report(router.port, "FORGER", actions[0]) == 0x0110
            assert "storage commitment result 1.2.826.0.1.3680043.8.498.20 from FORGER at " \
                "127.0.0.1 refused" in router.log()
            assert _report(router.port, "PACS_SCU", actions[0]) == 0x0000
            report = requester.wait_report(transaction, 20)
            assert report.reporter_ae == ROUTER_AE
            assert report.committed == ((str(CTImageStorage), "1.2.826.0.1.3680043.8.498.21"),)
            assert list((router.spool / "commitments").iterdir()) == []
            _no_traceback(router)
        finally:
            router.stop()
            server.shutdown()


def test_a_silent_requester_has_its_result_kept_before_the_upstream_gives_up(
        tmp_path: Path) -> None:
    """Orthanc waits 10 s for the answer to its report (DicomScuTimeout) and then marks its
    commitment job failed. To a requester whose SCP takes connections and says nothing, the
    router waited its association timeout (30 s) before keeping the result: Orthanc's job
    failed though the requester later got its result. The first try now lasts 5 s at most."""
    server, port, actions = _committing_pacs()
    silent = socket.create_server((LOCALHOST, 0))  # takes connections, never answers
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                                  "port": port}},
        "known_aes": {"MODALITY": {"host": LOCALHOST, "port": silent.getsockname()[1]}},
        "rules": [{"name": "qr", "query": ["pacs"]}]})
    router.start()
    try:
        status, _ = _request_commitment(
            router.port, "1.2.826.0.1.3680043.8.498.30", "1.2.826.0.1.3680043.8.498.31")
        assert status == 0x0000 and len(actions) == 1
        assert _report(router.port, "PACS", actions[0], dimse_timeout=10) == 0x0000
        assert (router.spool / "commitments" / "1.2.826.0.1.3680043.8.498.30.result").exists()
        assert "kept on the spool, sent again until MODALITY takes it" in router.log()
        _no_traceback(router)
    finally:
        silent.close()  # first: its waiting connections reset, no worker waits on them
        router.stop()
        server.shutdown()


def test_a_requester_answering_its_result_after_it_was_kept_gets_it_once(
        tmp_path: Path) -> None:
    """The requester's SCP answers the first try only once the router has kept the result
    (after the 5 s the upstream is given): slow, not gone. The first try was cut at 5 s and
    the kept copy sent 2 s later, so the modality heard the same transaction twice."""
    server, port, actions = _committing_pacs()
    transaction = "1.2.826.0.1.3680043.8.498.40"
    reports: list[str] = []
    kept = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        reports.append(str(event.event_information.TransactionUID))
        if len(reports) == 1:
            kept.wait(30)
        return 0x0000, None

    requester_port = free_port()
    scp = _requester_scp(requester_port, on_report)
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                                  "port": port}},
        "known_aes": {"MODALITY": {"host": LOCALHOST, "port": requester_port}},
        "rules": [{"name": "qr", "query": ["pacs"]}]})
    router.start()
    commitments = router.spool / "commitments"
    threading.Thread(target=lambda: wait_for(
        lambda: (commitments / f"{transaction}.result").exists()) and kept.set(),
        daemon=True).start()
    try:
        status, _ = _request_commitment(router.port, transaction,
                                        "1.2.826.0.1.3680043.8.498.41")
        assert status == 0x0000 and len(actions) == 1
        assert _report(router.port, "PACS", actions[0], dimse_timeout=20) == 0x0000
        assert kept.wait(10)  # the upstream heard Success with the result kept
        assert wait_for(lambda: not list(commitments.iterdir()), timeout=40)
        assert reports == [transaction]
        assert f"result {transaction} delivered to MODALITY on its first try" in router.log()
        _no_traceback(router)
    finally:
        router.stop()
        server.shutdown()
        scp.shutdown()


def test_a_later_report_replaces_a_kept_result_and_the_requester_hears_only_it(
        tmp_path: Path) -> None:
    """The archive reports "none committed", then "all committed", while the requester's SCP
    is down and the first report is kept: the second was refused as an unknown transaction
    (the kept one had taken it), and the requester heard only the first."""
    server, port, actions = _committing_pacs()
    transaction = "1.2.826.0.1.3680043.8.498.42"
    reports: list[int] = []
    requester_port = free_port()  # nobody listening yet
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                                  "port": port}},
        "known_aes": {"MODALITY": {"host": LOCALHOST, "port": requester_port}},
        "rules": [{"name": "qr", "query": ["pacs"]}]})
    router.start()
    scp = None
    try:
        status, _ = _request_commitment(router.port, transaction,
                                        "1.2.826.0.1.3680043.8.498.43")
        assert status == 0x0000 and len(actions) == 1
        assert _report(router.port, "PACS", actions[0], failed=True) == 0x0000  # kept
        assert _report(router.port, "FORGER", actions[0]) == 0x0110  # not its reporter
        assert _report(router.port, "PACS", actions[0]) == 0x0000
        assert f"result {transaction} from PACS for MODALITY replaces" in router.log()

        def on_report(event: Any) -> tuple[int, None]:
            reports.append(event.event_type)
            return 0x0000, None

        scp = _requester_scp(requester_port, on_report)
        commitments = router.spool / "commitments"
        assert wait_for(lambda: not list(commitments.iterdir()), timeout=40)
        assert reports == [1]  # all committed, once; never "none committed"
        _no_traceback(router)
    finally:
        router.stop()
        server.shutdown()
        if scp is not None:
            scp.shutdown()


@pytest.mark.parametrize("timeout", ["request_timeout", "dimse_timeout", "worker_killed"])
def test_a_storage_commitment_answered_after_the_routers_timeout_gets_its_result(
        tmp_path: Path, timeout: str) -> None:
    """The router gave up on the N-ACTION (the acceptor's request_timeout, the worker's
    dimse_timeout towards the upstream, or kill -9 of the worker that relayed it): the
    requester gets 0x0110, but the upstream took the request and its N-EVENT-REPORT still
    reaches the requester (before: the commitment was forgotten as if refused, and the
    result was refused as unknown; after a dead worker, still so until the broker's failure
    said that nobody knows whether the upstream took it)."""
    upstream = LateCommitmentSCP(delay=5.0 if timeout == "worker_killed" else 2.5)
    pacs: dict[str, Any] = {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                            "port": upstream.port}
    extra: dict[str, Any] = {"request_timeout": 30}
    if timeout == "request_timeout":
        extra["request_timeout"] = 1
    elif timeout == "dimse_timeout":
        pacs["dimse_timeout"] = 1
    with CommitmentRequester("MODALITY") as requester:
        router = RouterProcess(tmp_path / "router", {
            "destinations": {"pacs": pacs},
            "known_aes": {"MODALITY": {"host": LOCALHOST, "port": requester.port}},
            "rules": [{"name": "qr", "query": ["pacs"]}], **extra})
        router.start()
        upstream.router_port = router.port
        if timeout == "worker_killed":  # while the upstream holds the N-ACTION
            killer = threading.Thread(target=lambda: upstream.received.wait(30) and [
                os.kill(router.child_pid(f"worker-{n}"), signal.SIGKILL) for n in (0, 1)],
                daemon=True)
            killer.start()
        try:
            status, transaction = _request_commitment(
                router.port, "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.11")
            assert status == 0x0110
            report = requester.wait_report(transaction, 20)
            assert report.committed == ((str(CTImageStorage), "1.2.826.0.1.3680043.8.498.11"),)
            assert upstream.reported.wait(10) and upstream.report_status == 0x0000
            # The requester's answer to its report can miss request_timeout (1 s) on a busy
            # machine: the router then keeps the result and sends it again until answered.
            commitments = router.spool / "commitments"
            assert wait_for(lambda: not list(commitments.iterdir()), timeout=40), \
                list(commitments.iterdir())
            assert "stays pending" in router.log()
            _no_traceback(router)
        finally:
            router.stop()
            upstream.close()
