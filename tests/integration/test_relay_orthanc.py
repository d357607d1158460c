"""Orthanc as the archive behind the router: query, retrieve and storage commitment.

C-FIND and C-MOVE through the router are compared with the same requests sent straight to
Orthanc. Storage commitment goes the whole way: the requester's N-ACTION through the router
to Orthanc, Orthanc's N-EVENT-REPORT on a new association to the router's own AE (Orthanc
knows the router as a modality), and the router's on to the requester (a known AE), on a
new association again, with the committed and failed instances as Orthanc said.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.archive_servers import Orthanc
from tests.commitment import CommitmentReport, CommitmentRequester
from tests.dcmtk import LOCALHOST, StoreSCP, free_ports
from tests.dicom_samples import IMPLICIT_VR_LE
from tests.integration.router_process import RouterProcess, wait_for
from tests.qr_tools import run_findscu, run_movescu
from tests.study_set import Study, StudySet, instance_mismatches

pytestmark = pytest.mark.integration
bounded = pytest.mark.timeout(180)

ROUTER_AE = "DICOM-ROUTER"
REQUESTER_AE = "STGCMTSCU"
STUDY_KEYS = {"StudyInstanceUID": "", "PatientID": "", "PatientName": "", "AccessionNumber": "",
              "StudyDate": "", "StudyDescription": "", "ModalitiesInStudy": "",
              "NumberOfStudyRelatedInstances": ""}
NO_SUCH_OBJECT_INSTANCE = 0x0112
ALL_COMMITTED, FAILURES_EXIST = 1, 2


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, study_set: StudySet,
            viewer: StoreSCP) -> Iterator[Orthanc]:
    modalities = {"viewer": (viewer.ae_title, LOCALHOST, viewer.port)}
    with Orthanc(tmp_path_factory.mktemp("orthanc"), study_set, "ORTHANC",
                 modalities=modalities, verbose=True) as archive:
        yield archive


@pytest.fixture(scope="module")
def requester() -> Iterator[CommitmentRequester]:
    """The storage commitment requester, listening for its report: one of the router's
    known_aes."""
    with CommitmentRequester(REQUESTER_AE) as scu:
        yield scu


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc,
           requester: CommitmentRequester) -> Iterator[RouterProcess]:
    config = {
        "destinations": {"orthanc": {"type": "dicom", "ae_title": orthanc.ae_title,
                                     "host": LOCALHOST, "port": orthanc.dicom_port,
                                     "dimse_timeout": 30}},
        "known_aes": {REQUESTER_AE: {"host": LOCALHOST, "port": requester.port}},
        "rules": [{"name": "archive", "query": ["orthanc"]}],
        "request_timeout": 60,
    }
    with RouterProcess(tmp_path_factory.mktemp("router"), config) as process:
        # Orthanc takes N-ACTION only from a listed AE and reports to that AE's address: the
        # router's calling AE is its ae_title, and it listens on process.port.
        orthanc.add_modality("router", ROUTER_AE, LOCALHOST, process.port)
        yield process


def report_of(requester: CommitmentRequester, uid: str, router: RouterProcess,
              orthanc: Orthanc) -> CommitmentReport:
    """The report for uid, or a failure that shows what the router and Orthanc said."""
    try:
        return requester.wait_report(uid, timeout=30.0)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- router:\n{router.log()[-4000:]}\n--- Orthanc:\n"
                             f"{orthanc.log()[-4000:]}") from None


def mixed_study(study_set: StudySet) -> Study:
    """The study with an Implicit VR series: Orthanc moves each file in its own syntax."""
    return next(s for s in study_set.studies if IMPLICIT_VR_LE in s.transfer_syntaxes)


def empty(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.mkdir()


def by_study(results: list[Dataset]) -> dict[str, Dataset]:
    found = {str(r.StudyInstanceUID): r for r in results}
    assert len(found) == len(results), "a study answered twice"
    return found


# --- C-FIND ---------------------------------------------------------------------------------

@bounded
def test_c_find_through_the_router_equals_orthancs_answer(router: RouterProcess,
                                                          orthanc: Orthanc,
                                                          study_set: StudySet) -> None:
    direct = run_findscu(LOCALHOST, orthanc.dicom_port, orthanc.ae_title, "STUDY", STUDY_KEYS)
    via = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", STUDY_KEYS)
    assert len(direct) == len(study_set.studies)
    assert by_study(via) == by_study(direct)  # every study, every key, every value

    patient = study_set.patients[1]
    keys = {"PatientID": patient.patient_id, "StudyInstanceUID": "", "StudyDate": ""}
    direct = run_findscu(LOCALHOST, orthanc.dicom_port, orthanc.ae_title, "STUDY", keys)
    via = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", keys)
    assert sorted(by_study(via)) == sorted(s.study_instance_uid for s in patient.studies)
    assert by_study(via) == by_study(direct)

    study = patient.studies[0]
    keys = {"StudyInstanceUID": study.study_instance_uid, "SeriesInstanceUID": "",
            "Modality": "", "SeriesNumber": ""}
    direct = run_findscu(LOCALHOST, orthanc.dicom_port, orthanc.ae_title, "SERIES", keys)
    via = run_findscu(LOCALHOST, router.port, ROUTER_AE, "SERIES", keys)
    assert sorted(str(r.SeriesInstanceUID) for r in via) == \
        sorted(s.series_instance_uid for s in study.series)
    assert sorted(via, key=lambda r: str(r.SeriesInstanceUID)) == \
        sorted(direct, key=lambda r: str(r.SeriesInstanceUID))


# --- C-MOVE ---------------------------------------------------------------------------------

def move_with_counts(port: int, study_uid: str, destination: str) -> tuple[int, int, int]:
    """C-MOVE from pynetdicom: the final (status, completed, failed) as received."""
    ae = AE(ae_title="COUNTER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(LOCALHOST, port, ae_title=ROUTER_AE)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    last: Any = None
    try:
        for status, _ in assoc.send_c_move(query, destination,
                                           StudyRootQueryRetrieveInformationModelMove):
            last = status
    finally:
        assoc.release()
    return (int(last.Status), int(last.get("NumberOfCompletedSuboperations", -1)),
            int(last.get("NumberOfFailedSuboperations", -1)))


@bounded
def test_c_move_through_the_router_delivers_exactly_the_study(router: RouterProcess,
                                                              viewer: StoreSCP,
                                                              study_set: StudySet) -> None:
    """Pass-through: Orthanc sends to VIEWER itself; what arrives is the study as stored,
    each instance in its own transfer syntax, and nothing else."""
    study = mixed_study(study_set)
    empty(viewer.output_dir)
    result = run_movescu(LOCALHOST, router.port, ROUTER_AE, "STUDY",
                         {"StudyInstanceUID": study.study_instance_uid}, viewer.ae_title)
    assert result.ok, result.output
    assert instance_mismatches(study.instances, viewer.received_files()) == []

    empty(viewer.output_dir)
    final = move_with_counts(router.port, study.study_instance_uid, viewer.ae_title)
    assert final == (0x0000, len(study.instances), 0)
    assert instance_mismatches(study.instances, viewer.received_files()) == []

    unknown = run_movescu(LOCALHOST, router.port, ROUTER_AE, "STUDY",
                          {"StudyInstanceUID": study.study_instance_uid}, "NOBODY",
                          check=False)
    assert not unknown.ok  # Orthanc's refusal, relayed


# --- storage commitment ---------------------------------------------------------------------

@bounded
def test_storage_commitment_result_comes_back_through_the_router(
        router: RouterProcess, orthanc: Orthanc, requester: CommitmentRequester,
        study_set: StudySet) -> None:
    study = study_set.studies[0]
    held = [(i.sop_class_uid, i.sop_instance_uid) for i in study.instances[:4]]
    missing = (str(CTImageStorage), generate_uid())
    uid = requester.request(LOCALHOST, router.port, ROUTER_AE, [*held, missing])
    report = report_of(requester, uid, router, orthanc)
    assert report.transaction_uid == uid
    assert report.event_type_id == FAILURES_EXIST
    assert sorted(report.committed) == sorted(held)
    assert report.failed == ((*missing, NO_SUCH_OBJECT_INSTANCE),)
    assert report.reporter_ae == ROUTER_AE  # the router's own association, not Orthanc's
    assert not report.same_association

    everything = [(i.sop_class_uid, i.sop_instance_uid) for i in study_set.studies[1].instances]
    uid = requester.request(LOCALHOST, router.port, ROUTER_AE, everything)
    report = report_of(requester, uid, router, orthanc)
    assert report.event_type_id == ALL_COMMITTED
    assert sorted(report.committed) == sorted(everything)
    assert report.failed == ()
    # Orthanc hears the requester's answer a moment after the requester has the report.
    assert wait_for(lambda: router.metric("dicom_router_dimse_requests_total",
                                          command="N-EVENT-REPORT", status="0x0000") == 2,
                    timeout=10.0)


@pytest.mark.timeout(300)
def test_a_commitment_result_reaches_its_requester_through_any_acceptor(
        tmp_path: Path, router: RouterProcess, orthanc: Orthanc,
        requester: CommitmentRequester, study_set: StudySet) -> None:
    """listen.acceptors 2: Orthanc's N-EVENT-REPORT comes on an association of its own, which
    the kernel may hand to the other acceptor than the one that relayed the N-ACTION (before,
    that one did not know the Transaction UID and Orthanc heard "cannot be handled"). Requests
    go on until that happened at least once; each report must reach the requester."""
    config = yaml.safe_load(router.config_path.read_text())
    del config["spool"], config["metrics"]  # its own, and its own ports
    config["listen"] = {"acceptors": 2}
    two = RouterProcess(tmp_path / "acceptors-router", config)
    instances = [(i.sop_class_uid, i.sop_instance_uid) for i in study_set.studies[0].instances]
    with two:
        orthanc.add_modality("router", ROUTER_AE, LOCALHOST, two.port)
        try:
            crossed = 0
            for n in range(16):
                before = two.accepted_by_acceptor()
                uid = requester.request(LOCALHOST, two.port, ROUTER_AE, instances)
                report = report_of(requester, uid, two, orthanc)
                assert report.event_type_id == ALL_COMMITTED
                assert sorted(report.committed) == sorted(instances)
                crossed += two.spread_over_acceptors(before, 2)  # the N-ACTION's and Orthanc's
                if crossed and n >= 3:
                    break
            assert crossed, "in 16 requests Orthanc always reached the same acceptor"
            assert not list((two.spool / "commitments").iterdir())
        finally:
            orthanc.add_modality("router", ROUTER_AE, LOCALHOST, router.port)


@pytest.mark.timeout(240)
def test_a_known_ae_added_by_a_reload_gets_its_commitment_result(
        tmp_path: Path, router: RouterProcess, orthanc: Orthanc, study_set: StudySet) -> None:
    """known_aes added by a config reload reach the workers too (they restart, as for a
    destinations change): the result for the new AE is delivered. Before, the acceptor took
    the new table and the workers kept the old one ("no upstream answered: NEWMODALITY")."""
    config = yaml.safe_load(router.config_path.read_text())
    del config["spool"], config["metrics"], config["listen"]  # its own, and its own ports
    instances = [(i.sop_class_uid, i.sop_instance_uid) for i in study_set.studies[0].instances]
    with CommitmentRequester("NEWMODALITY") as newcomer, \
            RouterProcess(tmp_path / "reloaded", config) as reloaded:
        orthanc.add_modality("router", ROUTER_AE, LOCALHOST, reloaded.port)
        try:
            config = yaml.safe_load(reloaded.config_path.read_text())
            config["known_aes"]["NEWMODALITY"] = {"host": LOCALHOST, "port": newcomer.port}
            reloaded.config_path.write_text(yaml.safe_dump(config))
            assert reloaded.process is not None
            os.kill(reloaded.process.pid, signal.SIGHUP)
            assert wait_for(lambda: "config reloaded from" in reloaded.log(), timeout=60)
            uid = newcomer.request(LOCALHOST, reloaded.port, ROUTER_AE, instances)
            report = report_of(newcomer, uid, reloaded, orthanc)
            assert report.event_type_id == ALL_COMMITTED
            assert wait_for(lambda: not list((reloaded.spool / "commitments").iterdir()),
                            timeout=10)
        finally:
            orthanc.add_modality("router", ROUTER_AE, LOCALHOST, router.port)


@pytest.mark.timeout(240)
def test_a_result_whose_requester_was_down_reaches_it_when_back_after_a_crash(
        tmp_path: Path, router: RouterProcess, orthanc: Orthanc, study_set: StudySet) -> None:
    """Orthanc reports once. The requester's SCP is down then: the router keeps the result on
    the spool and answers Orthanc Success; kill -9 of the whole router, a restart, the
    requester's SCP back: the report arrives. Before, Orthanc heard 0x0110, logged its job
    failed, and the requester never heard."""
    config = yaml.safe_load(router.config_path.read_text())
    del config["spool"], config["metrics"], config["listen"]  # its own, and its own ports
    port = free_ports(1)[0]
    config["known_aes"]["LATECOMER"] = {"host": LOCALHOST, "port": port}
    instances = [(i.sop_class_uid, i.sop_instance_uid) for i in study_set.studies[0].instances]
    late = CommitmentRequester("LATECOMER", port=port)  # its SCP not listening yet
    with RouterProcess(tmp_path / "kept", config) as kept:
        orthanc.add_modality("router", ROUTER_AE, LOCALHOST, kept.port)
        try:
            uid = late.request(LOCALHOST, kept.port, ROUTER_AE, instances)
            result = kept.spool / "commitments" / f"{uid}.result"
            assert wait_for(result.exists, timeout=30), kept.log()[-3000:]
            # Seen without reading the log: counted once, whatever the acceptors.
            assert wait_for(lambda: kept.metric("dicom_router_commitment_results_kept") == 1,
                            timeout=10)
            assert kept.status()["commitment_results_kept"] == 1
            # Why, whole in the log (before: cut to a DICOM ErrorComment's 64 characters,
            # "... cannot connect to LATECOMER (127").
            assert f"({LOCALHOST}:{port})): kept on the spool" in kept.log()
            assert wait_for(lambda: kept.metric("dicom_router_dimse_requests_total",
                                                command="N-EVENT-REPORT",
                                                status="0x0000") == 1, timeout=10)
            kept.kill_all()
            kept.start()
            with late:
                report = report_of(late, uid, kept, orthanc)
            assert report.event_type_id == ALL_COMMITTED
            assert sorted(report.committed) == sorted(instances)
            assert wait_for(lambda: not result.exists(), timeout=10)
            assert f"storage commitment result {uid} delivered to LATECOMER" in kept.log()
            assert wait_for(lambda: kept.metric("dicom_router_commitment_results_kept") == 0,
                            timeout=10)
        finally:
            orthanc.add_modality("router", ROUTER_AE, LOCALHOST, router.port)


@bounded
def test_a_requester_the_router_cannot_reach_is_refused_up_front(
        router: RouterProcess, orthanc: Orthanc, study_set: StudySet) -> None:
    """The router has no address for this requester's report: rather than relay a commitment
    whose result it could never deliver, it refuses the N-ACTION and says why in its log."""
    instance = study_set.instances[0]
    with CommitmentRequester("STRANGER") as stranger, \
            pytest.raises(RuntimeError, match="N-ACTION answered"):
        stranger.request(LOCALHOST, router.port, ROUTER_AE,
                         [(instance.sop_class_uid, instance.sop_instance_uid)])
    assert "storage commitment from STRANGER refused: add it to known_aes" in router.log()
    assert router.metric("dicom_router_dimse_requests_total", command="N-ACTION",
                         status="0x0110") == 1
