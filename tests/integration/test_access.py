"""Who may talk to the router: allowlists, user identity and limits, each rejected with the
A-ASSOCIATE-RJ reason PS3.8 defines, as DCMTK reports it."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom import AE

from router.acceptor.access import hash_passcode
from tests.dcmtk import LOCALHOST, run_echoscu, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration import pdus
from tests.integration.conftest import RouterFactory
from tests.integration.router_process import RouterProcess

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, **listen: Any) -> dict[str, Any]:
    return {"listen": listen,
            "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
            "rules": [{"name": "all", "forward": ["keep"]}]}


def _rejections(router: RouterProcess, reason: str) -> float:
    return router.metric("dicom_router_association_rejections_total", reason=reason)


def test_calling_and_called_ae_allowlists(start_router: RouterFactory, tmp_path: Path) -> None:
    router = start_router(_config(tmp_path, allowed_calling_ae=["CT1"],
                                  allowed_called_ae=["DICOM-ROUTER", "ROUTER2"]))
    assert run_echoscu(LOCALHOST, router.port, called_ae="ROUTER2",
                       calling_ae="CT1").returncode == 0

    stranger = run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER", calling_ae="CT9")
    assert "Calling AE Title Not Recognized" in stranger.stderr
    assert "Rejected Permanent, Source: Service User" in stranger.stderr
    elsewhere = run_echoscu(LOCALHOST, router.port, called_ae="OTHER", calling_ae="CT1")
    assert "Called AE Title Not Recognized" in elsewhere.stderr
    assert _rejections(router, "calling_ae") == 1 and _rejections(router, "called_ae") == 1


def test_source_network_allowlist(start_router: RouterFactory, tmp_path: Path) -> None:
    router = start_router(_config(tmp_path, allowed_sources=["10.0.0.0/8"]))
    refused = run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert refused.returncode != 0
    assert "Rejected Permanent" in refused.stderr and "Reason: No Reason" in refused.stderr
    assert _rejections(router, "source") == 1


def test_user_identity_with_hashed_passcodes(start_router: RouterFactory, tmp_path: Path) -> None:
    users = [{"username": "modality", "passcode_hash": hash_passcode("right-passcode")}]
    router = start_router(_config(tmp_path, users=users, require_user_identity=True))
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)

    def send(*identity: str) -> int:
        return run_storescu([source], LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                            extra_args=list(identity)).returncode

    assert send("-usr", "modality", "-pwd", "right-passcode") == 0
    # Regression: no User Identity response (PS3.7 D.3.3.7) when one was asked for; storescu
    # then failed "Positive response requested but none received".
    assert send("-usr", "modality", "-pwd", "right-passcode", "--pos-response") == 0
    assert send("-usr", "modality", "-pwd", "wrong") != 0
    assert send("-usr", "nobody", "-pwd", "right-passcode") != 0
    assert send() != 0  # no identity at all, but the listener requires one
    assert _rejections(router, "user_identity") == 3


def test_associations_per_calling_ae_are_limited(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    router = start_router(_config(tmp_path, max_associations_per_calling_ae=2))
    ae = AE(ae_title="BUSY")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate(LOCALHOST, router.port, ae_title="DICOM-ROUTER") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        third = run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER", calling_ae="BUSY")
        assert "Rejected Transient" in third.stderr and "Local Limit Exceeded" in third.stderr
        assert run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                           calling_ae="OTHER").returncode == 0
    finally:
        for assoc in held:
            assoc.release()
    assert run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                       calling_ae="BUSY").returncode == 0


def test_dataset_larger_than_the_limit_is_refused(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    router = start_router(_config(tmp_path, max_dataset_bytes=50_000))
    small = write_instance(tmp_path / "a", sop_class=CTImageStorage,
                           transfer_syntax=EXPLICIT_VR_LE, size_bytes=10_000)
    large = write_instance(tmp_path / "b", sop_class=CTImageStorage,
                           transfer_syntax=EXPLICIT_VR_LE, size_bytes=200_000)
    assert run_storescu([small], LOCALHOST, router.port, called_ae="DICOM-ROUTER").returncode == 0
    refused = run_storescu([large], LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                           extra_args=["-d"])
    assert "0xc003" in (refused.stdout + refused.stderr).lower()
    assert router.metric("dicom_router_instances_received_total", result="too_large") == 1


# Regression (issue 16): pynetdicom's require_called_aet rejected without our handlers
# seeing why: audited, but neither logged nor counted in association_rejections_total.
def test_require_called_ae_rejections_are_counted_and_logged(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    router = start_router(_config(tmp_path, require_called_ae=True))
    assert run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER").returncode == 0
    refused = run_echoscu(LOCALHOST, router.port, called_ae="ELSEWHERE")
    assert "Called AE Title Not Recognized" in refused.stderr
    assert _rejections(router, "called_ae") == 1
    assert "rejecting association" in router.log() and "ELSEWHERE" in router.log()


# Regression (issue 16): a request proposing no presentation context was accepted.
def test_a_request_without_presentation_contexts_is_rejected(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    router = start_router(_config(tmp_path))
    with pdus.RawAssociation(LOCALHOST, router.port) as conn:
        conn.send(pdus.a_associate_rq(contexts=()))
        pdu_type, _ = conn.read_pdu()
    assert pdu_type == pdus.A_ASSOCIATE_RJ
    assert _rejections(router, "no_presentation_context") == 1


# Regression (engine hunt): an AE title with a newline, ESC or a backslash (no AE title,
# PS3.5 6.2) was accepted and reached job headers, the log (a forged line) and /status.
def test_ae_titles_with_control_characters_or_a_backslash_are_rejected(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    router = start_router(_config(tmp_path))
    for called, calling, reject in (("DICOM-ROUTER", "EVIL\nFORGED", (1, 1, 3)),
                                    ("DICOM-ROUTER", "A\\B", (1, 1, 3)),
                                    ("\x1b[2JROUTER", "CT1", (1, 1, 7))):
        with pdus.RawAssociation(LOCALHOST, router.port) as conn:
            conn.send(pdus.a_associate_rq(called, calling))
            pdu_type, body = conn.read_pdu()
        assert (pdu_type, tuple(body[1:4])) == (pdus.A_ASSOCIATE_RJ, reject), calling
    assert _rejections(router, "calling_ae") == 2 and _rejections(router, "called_ae") == 1
    assert router.metric("dicom_router_associations_total", calling_ae="invalid",
                         result="rejected") == 2
    assert run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER").returncode == 0
    log = router.log()
    assert "the calling AE 'EVIL\\x0aFORGED' holds a control character" in log
    assert "the called AE '\\x1b[2JROUTER' holds a control character" in log
    assert "\x1b" not in log and not any(line.startswith("FORGED") for line in log.splitlines())


def test_max_associations_counts_requests_not_connections(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """max_associations is counted from received requests (issue 16): connections that
    have not sent theirs do not take a slot, and a rejection is counted and logged."""
    # Every peer here is 127.0.0.1: the per-source limit (1 by default here) would come first.
    router = start_router(_config(tmp_path, max_associations=2, max_associations_per_source=2))
    idle = [socket.create_connection((LOCALHOST, router.port)) for _ in range(5)]
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate(LOCALHOST, router.port, ae_title="DICOM-ROUTER") for _ in range(2)]
    try:
        assert all(a.is_established for a in held), "idle connections took the slots"
        third = run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert "Local Limit Exceeded" in third.stderr
        assert _rejections(router, "max_associations") == 1
        assert "listen.max_associations" in router.log()
    finally:
        for assoc in held:
            assoc.release()
        for sock in idle:
            sock.close()
    assert run_echoscu(LOCALHOST, router.port, called_ae="DICOM-ROUTER").returncode == 0
