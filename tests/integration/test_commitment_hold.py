"""A storage commitment waits for its instances still queued for the PACS (README "Storage
commitment"): Orthanc is both the store destination and the commitment SCP, paused by the
operator while a pynetdicom modality stores 5 instances and sends its N-ACTION. And a
modality that is an Orthanc too: its store job asks for commitment, and its report comes
back through the router.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE

from tests.archive_servers import Orthanc
from tests.commitment import CommitmentRequester
from tests.dcmtk import LOCALHOST
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.router_process import ROUTER, RouterProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROUTER_AE = "DICOM-ROUTER"
MODALITY_AE = "MODALITY"
ALL_COMMITTED, FAILURES_EXIST = 1, 2
NO_SUCH_OBJECT_INSTANCE = 0x0112
FAST_RETRY = {"max_attempts": 1000, "initial_delay": 0.2, "max_delay": 1.0}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with Orthanc(tmp_path_factory.mktemp("orthanc"), None, "ORTHANC") as archive:
        yield archive


@pytest.fixture
def modality() -> Iterator[CommitmentRequester]:
    with CommitmentRequester(MODALITY_AE) as scu:
        yield scu


def start_router(workdir: Path, orthanc: Orthanc, requester_port: int,
                 **pacs: Any) -> RouterProcess:
    config = {
        "destinations": {"pacs": {"type": "dicom", "ae_title": orthanc.ae_title,
                                  "host": LOCALHOST, "port": orthanc.dicom_port,
                                  "retry": FAST_RETRY, **pacs}},
        "known_aes": {MODALITY_AE: {"host": LOCALHOST, "port": requester_port}},
        "rules": [{"name": "archive", "forward": ["pacs"], "query": ["pacs"]}],
    }
    router = RouterProcess(workdir, config)  # started by `with`
    orthanc.add_modality("router", ROUTER_AE, LOCALHOST, router.port)
    return router


def destinations(router: RouterProcess, *args: str) -> None:
    done = subprocess.run([*ROUTER, "destinations", "--config", str(router.config_path),
                           *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def store(router: RouterProcess, folder: Path, count: int) -> list[tuple[str, str]]:
    """The modality stores `count` new instances; their (SOP class, SOP instance)."""
    study = generate_uid()
    files = [write_instance(folder, sop_class=CTImageStorage, transfer_syntax=EXPLICIT_VR_LE,
                            study_uid=study) for _ in range(count)]
    ae = AE(MODALITY_AE)
    ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
    assoc = ae.associate(LOCALHOST, router.port, ae_title=ROUTER_AE)
    assert assoc.is_established
    try:
        for path in files:
            assert assoc.send_c_store(dcmread(path)).Status == 0x0000
    finally:
        assoc.release()
    return [(str(CTImageStorage), str(dcmread(p).SOPInstanceUID)) for p in files]


def commit_in_background(requester: CommitmentRequester, router: RouterProcess,
                         instances: list[tuple[str, str]]) -> tuple[threading.Thread, list[Any]]:
    """The N-ACTION, whose answer waits for the hold: sent from a thread. The list gets the
    Transaction UID, or the exception."""
    outcome: list[Any] = []
    uid = generate_uid()

    def request() -> None:
        try:
            outcome.append(requester.request(LOCALHOST, router.port, ROUTER_AE, instances,
                                             transaction_uid=uid, timeout=60))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    return thread, outcome


def test_a_commitment_waits_for_its_instances_queued_for_the_pacs(
        tmp_path: Path, orthanc: Orthanc, modality: CommitmentRequester) -> None:
    # A bound well past what the resume and five deliveries take on a loaded machine (the
    # default 20 s held, at most 9.6 s under two CPU burners), below the requester's 60 s.
    with start_router(tmp_path / "router", orthanc, modality.port, commitment_hold=45) as router:
        destinations(router, "pause", "pacs")
        instances = store(router, tmp_path / "src", 5)
        thread, outcome = commit_in_background(modality, router, instances)
        # (Without the hold the N-ACTION is answered at once, and Orthanc reports failures.)
        assert wait_for(lambda: outcome or "5 of its 5 instance(s) still pending for pacs"
                        in router.log(), timeout=30), router.log()[-3000:]
        destinations(router, "resume", "pacs")
        thread.join(60)
        assert outcome and isinstance(outcome[0], str), (outcome, router.log()[-3000:])
        report = modality.wait_report(outcome[0], timeout=30)
        assert report.event_type_id == ALL_COMMITTED, report
        assert sorted(report.committed) == sorted(instances)
        assert report.failed == ()
        assert "its instances reached pacs" in router.log()
        # Named by its Transaction UID, as in the PACS's log and the result's lines.
        assert f"storage commitment {outcome[0]} from {MODALITY_AE} (N-ACTION " in router.log()
        assert router.metric("dicom_router_commitment_holds_total", outcome="delivered") == 1


def test_a_commitment_goes_at_its_bound_with_what_the_pacs_has(
        tmp_path: Path, orthanc: Orthanc, modality: CommitmentRequester) -> None:
    with start_router(tmp_path / "router", orthanc, modality.port, commitment_hold=1) as router:
        destinations(router, "pause", "pacs")
        instances = store(router, tmp_path / "src", 5)
        thread, outcome = commit_in_background(modality, router, instances)
        thread.join(60)
        assert outcome and isinstance(outcome[0], str), (outcome, router.log()[-3000:])
        report = modality.wait_report(outcome[0], timeout=30)
        assert report.event_type_id == FAILURES_EXIST, report
        assert report.committed == ()
        assert sorted(report.failed) == sorted((*i, NO_SUCH_OBJECT_INSTANCE)
                                               for i in instances)
        assert "relayed at its bound (1s, commitment_hold) with 5 instance(s) still pending " \
            "for pacs" in router.log()
        assert f"storage commitment {outcome[0]} from {MODALITY_AE} (N-ACTION " in router.log()
        assert router.metric("dicom_router_commitment_holds_total", outcome="bound") == 1


def test_an_orthanc_modality_hears_its_study_committed_by_the_orthanc_pacs(
        tmp_path: Path, orthanc: Orthanc) -> None:
    """Orthanc's `/modalities/{id}/store` with StorageCommitment: its C-STOREs and then an
    N-ACTION on an association of their own, to the router; the PACS reports on a new
    association to the router, the router on a new one to the modality Orthanc, which takes
    a report only from an AE it knows and only for a transaction it asked about."""
    study = generate_uid()
    files = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE, study_uid=study) for _ in range(50)]
    with Orthanc(tmp_path / "modality", files, MODALITY_AE) as modality, \
            start_router(tmp_path / "router", orthanc, modality.dicom_port) as router:
        modality.add_modality("router", ROUTER_AE, LOCALHOST, router.port)
        job = modality.rest("/modalities/router/store", "POST", {
            "Resources": modality.rest("/studies"), "StorageCommitment": True,
            "Synchronous": False})
        path = f"/jobs/{job['ID']}"
        assert wait_for(lambda: modality.rest(path)["State"] not in ("Pending", "Running"),
                        timeout=60)
        done = modality.rest(path)
        assert done["State"] == "Success", (done, router.log()[-3000:])
        uid = done["Content"]["StorageCommitmentTransactionUID"]
        # The job ends once the N-ACTION is answered; the report has its own resource.
        report = f"/storage-commitment/{uid}"
        assert wait_for(lambda: modality.rest(report)["Status"] != "Pending", timeout=30), \
            (router.log()[-3000:], modality.log()[-3000:])
        outcome = modality.rest(report)
        assert outcome["Status"] == "Success", outcome
        assert outcome["RemoteAET"] == ROUTER_AE
        assert outcome["Failures"] == []
        sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
        assert {i["SOPInstanceUID"] for i in outcome["Success"]} == sent
