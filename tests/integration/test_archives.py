"""The archive fixtures (tests/archive_servers.py, tests/qr_tools.py) against the real tools,
with no router involved.

dcmqrscp and Orthanc each hold the same study set; DCMTK's findscu/getscu/movescu query and
retrieve it, a DCMTK storescp is the C-MOVE destination, and pynetdicom asks Orthanc for
storage commitment. What these tests establish is what the proxy tests can rely on.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, generate_uid

from tests.archive_servers import Dcmqrscp, Orthanc
from tests.commitment import CommitmentRequester
from tests.dcmtk import LOCALHOST, StoreSCP
from tests.dicom_samples import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from tests.qr_tools import ToolError, run_findscu, run_getscu, run_movescu
from tests.study_set import Study, StudySet, instance_mismatches

pytestmark = pytest.mark.integration

STUDY_KEYS = {"StudyInstanceUID": "", "PatientID": "", "AccessionNumber": "", "StudyDate": ""}
NO_SUCH_OBJECT_INSTANCE = 0x0112


@pytest.fixture(scope="module")
def destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """The C-MOVE destination of both archives; each test empties it first."""
    folder = tmp_path_factory.mktemp("dest")
    with StoreSCP(folder, "DEST", extra_args=["--fork"]) as scp:
        yield scp


@pytest.fixture(scope="module")
def dcmqrscp(
    tmp_path_factory: pytest.TempPathFactory, study_set: StudySet, destination: StoreSCP
) -> Iterator[Dcmqrscp]:
    workdir = tmp_path_factory.mktemp("dcmqrscp")
    moves = [(destination.ae_title, LOCALHOST, destination.port)]
    with Dcmqrscp(workdir, study_set, "ARCHIVE", move_destinations=moves) as archive:
        yield archive


@pytest.fixture(scope="module")
def orthanc(
    tmp_path_factory: pytest.TempPathFactory, study_set: StudySet, destination: StoreSCP
) -> Iterator[Orthanc]:
    workdir = tmp_path_factory.mktemp("orthanc")
    modalities = {"dest": (destination.ae_title, LOCALHOST, destination.port)}
    with Orthanc(workdir, study_set, "ORTHANC", modalities=modalities) as archive:
        yield archive


def explicit_study(study_set: StudySet) -> Study:
    return next(s for s in study_set.studies if s.transfer_syntaxes == {EXPLICIT_VR_LE})


def mixed_study(study_set: StudySet) -> Study:
    return next(s for s in study_set.studies if IMPLICIT_VR_LE in s.transfer_syntaxes)


def empty(scp: StoreSCP) -> StoreSCP:
    shutil.rmtree(scp.output_dir)
    scp.output_dir.mkdir()
    return scp


def syntaxes(files: list[Path]) -> set[str]:
    return {str(read_file_meta_info(path).TransferSyntaxUID) for path in files}


def test_study_set_describes_its_files(study_set: StudySet) -> None:
    assert len(study_set.patients) == 3
    assert len(study_set.studies) == 6
    assert len(study_set.instances) == 36
    assert len({p.patient_id for p in study_set.patients}) == 3
    assert len({s.accession_number for s in study_set.studies}) == 6
    assert len({s.study_date for s in study_set.studies}) == 6
    assert all(path.stat().st_size < 6000 for path in study_set.files)
    implicit = [i for i in study_set.instances if i.transfer_syntax == IMPLICIT_VR_LE]
    assert len(implicit) == 3
    assert syntaxes([i.path for i in implicit]) == {IMPLICIT_VR_LE}


# -- dcmqrscp ---------------------------------------------------------------------------------


def test_dcmqrscp_study_root_find_returns_every_study(
    dcmqrscp: Dcmqrscp, study_set: StudySet
) -> None:
    results = run_findscu(LOCALHOST, dcmqrscp.port, dcmqrscp.ae_title, "STUDY", STUDY_KEYS)
    found = {r.StudyInstanceUID: r for r in results}
    assert len(results) == len(found) == len(study_set.studies)
    for study in study_set.studies:
        answer = found[study.study_instance_uid]
        assert answer.PatientID == study_set.patient_of(study).patient_id
        assert answer.AccessionNumber == study.accession_number
        assert answer.StudyDate == study.study_date


def test_dcmqrscp_patient_root_find_filters_by_patient_id(
    dcmqrscp: Dcmqrscp, study_set: StudySet
) -> None:
    patient = study_set.patients[1]
    args = (LOCALHOST, dcmqrscp.port, dcmqrscp.ae_title)
    patients = run_findscu(
        *args, "PATIENT", {"PatientID": patient.patient_id, "PatientName": ""}, model="patient"
    )
    assert [(p.PatientID, str(p.PatientName)) for p in patients] == [
        (patient.patient_id, patient.patient_name)
    ]
    studies = run_findscu(
        *args,
        "STUDY",
        {"PatientID": patient.patient_id, "StudyInstanceUID": ""},
        model="patient",
    )
    assert sorted(s.StudyInstanceUID for s in studies) == sorted(
        s.study_instance_uid for s in patient.studies
    )


def test_dcmqrscp_get_returns_the_study_byte_identical(
    dcmqrscp: Dcmqrscp, study_set: StudySet, tmp_path: Path
) -> None:
    study = explicit_study(study_set)
    files = run_getscu(
        LOCALHOST,
        dcmqrscp.port,
        dcmqrscp.ae_title,
        "STUDY",
        {"StudyInstanceUID": study.study_instance_uid},
        tmp_path / "got",
    )
    assert syntaxes(files) == {EXPLICIT_VR_LE}
    assert instance_mismatches(study.instances, files) == []


def test_dcmqrscp_get_converts_implicit_instances_to_explicit(
    dcmqrscp: Dcmqrscp, study_set: StudySet, tmp_path: Path
) -> None:
    """getscu proposes all uncompressed syntaxes in one context and dcmqrscp prefers Explicit
    VR: an Implicit VR instance arrives converted, with an equal decoded dataset."""
    study = mixed_study(study_set)
    files = run_getscu(
        LOCALHOST,
        dcmqrscp.port,
        dcmqrscp.ae_title,
        "STUDY",
        {"StudyInstanceUID": study.study_instance_uid},
        tmp_path / "got",
    )
    assert syntaxes(files) == {EXPLICIT_VR_LE}
    assert instance_mismatches(study.instances, files) == []


def test_dcmqrscp_move_delivers_the_study_to_storescp(
    dcmqrscp: Dcmqrscp, study_set: StudySet, destination: StoreSCP
) -> None:
    study = explicit_study(study_set)
    run_movescu(
        LOCALHOST,
        dcmqrscp.port,
        dcmqrscp.ae_title,
        "STUDY",
        {"StudyInstanceUID": study.study_instance_uid},
        empty(destination).ae_title,
    )
    files = destination.received_files()
    assert syntaxes(files) == {EXPLICIT_VR_LE}
    assert instance_mismatches(study.instances, files) == [], destination.log()


def test_dcmqrscp_serves_concurrent_associations(dcmqrscp: Dcmqrscp, study_set: StudySet) -> None:
    def find(study: Study) -> list[str]:
        keys = {"StudyInstanceUID": study.study_instance_uid, "SeriesInstanceUID": ""}
        results = run_findscu(LOCALHOST, dcmqrscp.port, dcmqrscp.ae_title, "SERIES", keys)
        return sorted(r.SeriesInstanceUID for r in results)

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(find, study_set.studies))
    assert answers == [sorted(s.series_instance_uid for s in st.series) for st in study_set.studies]


def test_dcmqrscp_refuses_a_move_to_an_unknown_destination(
    dcmqrscp: Dcmqrscp, study_set: StudySet
) -> None:
    result = run_movescu(
        LOCALHOST,
        dcmqrscp.port,
        dcmqrscp.ae_title,
        "STUDY",
        {"StudyInstanceUID": study_set.studies[0].study_instance_uid},
        "NOWHERE",
        check=False,
    )
    assert result.status == "Refused: MoveDestinationUnknown"
    assert not result.ok


def test_dcmqrscp_find_failure_status_raises(dcmqrscp: Dcmqrscp) -> None:
    """findscu exits 0 on a failed C-FIND: run_findscu goes by the final status instead."""
    with pytest.raises(ToolError) as failure:
        run_findscu(LOCALHOST, dcmqrscp.port, dcmqrscp.ae_title, "NOSUCHLEVEL", STUDY_KEYS)
    assert failure.value.result.status.startswith("Failed")
    assert failure.value.result.returncode == 0


# -- Orthanc ----------------------------------------------------------------------------------


def test_orthanc_holds_the_study_set(orthanc: Orthanc, study_set: StudySet) -> None:
    statistics = orthanc.rest("/statistics")
    assert statistics["CountInstances"] == len(study_set.instances)
    assert statistics["CountStudies"] == len(study_set.studies)


def test_orthanc_study_root_find_returns_every_study(orthanc: Orthanc, study_set: StudySet) -> None:
    results = run_findscu(LOCALHOST, orthanc.dicom_port, orthanc.ae_title, "STUDY", STUDY_KEYS)
    found = {r.StudyInstanceUID: r for r in results}
    assert len(results) == len(found) == len(study_set.studies)
    for study in study_set.studies:
        assert found[study.study_instance_uid].AccessionNumber == study.accession_number


def test_orthanc_patient_root_find_filters_by_patient_id(
    orthanc: Orthanc, study_set: StudySet
) -> None:
    patient = study_set.patients[2]
    results = run_findscu(
        LOCALHOST,
        orthanc.dicom_port,
        orthanc.ae_title,
        "PATIENT",
        {"PatientID": patient.patient_id, "PatientName": ""},
        model="patient",
    )
    assert [(r.PatientID, str(r.PatientName)) for r in results] == [
        (patient.patient_id, patient.patient_name)
    ]


def test_orthanc_move_keeps_each_instance_in_its_syntax(
    orthanc: Orthanc, study_set: StudySet, destination: StoreSCP
) -> None:
    """Orthanc proposes each file's own syntax: even Implicit VR instances arrive as stored."""
    study = mixed_study(study_set)
    run_movescu(
        LOCALHOST,
        orthanc.dicom_port,
        orthanc.ae_title,
        "STUDY",
        {"StudyInstanceUID": study.study_instance_uid},
        empty(destination).ae_title,
    )
    files = destination.received_files()
    assert syntaxes(files) == study.transfer_syntaxes
    assert instance_mismatches(study.instances, files) == [], destination.log()


def test_orthanc_get_returns_the_study(
    orthanc: Orthanc, study_set: StudySet, tmp_path: Path
) -> None:
    study = explicit_study(study_set)
    files = run_getscu(
        LOCALHOST,
        orthanc.dicom_port,
        orthanc.ae_title,
        "STUDY",
        {"StudyInstanceUID": study.study_instance_uid},
        tmp_path / "got",
    )
    assert instance_mismatches(study.instances, files) == []


def test_orthanc_reports_storage_commitment_on_a_new_association(
    orthanc: Orthanc, study_set: StudySet
) -> None:
    """N-ACTION from an AE listed in DicomModalities: Orthanc answers Success, then opens its
    own association to that AE (as SCP role) for the N-EVENT-REPORT, even while the N-ACTION
    association is still open (held here)."""
    study = study_set.studies[0]
    known = [(i.sop_class_uid, i.sop_instance_uid) for i in study.instances]
    unknown = (str(CTImageStorage), generate_uid())
    with CommitmentRequester("MODALITY") as scu:
        orthanc.add_modality("modality", scu.ae_title, LOCALHOST, scu.port)
        uid = scu.request(
            LOCALHOST, orthanc.dicom_port, orthanc.ae_title, [*known, unknown], hold=10.0
        )
        report = scu.wait_report(uid, timeout=10.0)
    assert report.transaction_uid == uid
    assert report.event_type_id == 2  # failures exist
    assert sorted(report.committed) == sorted(known)
    assert report.failed == ((*unknown, NO_SUCH_OBJECT_INSTANCE),)
    assert report.reporter_ae == orthanc.ae_title
    assert not report.same_association


def test_orthanc_aborts_storage_commitment_from_an_unlisted_ae(
    orthanc: Orthanc, study_set: StudySet
) -> None:
    instance = study_set.instances[0]
    with CommitmentRequester("STRANGER") as scu, pytest.raises(RuntimeError, match="aborted"):
        scu.request(
            LOCALHOST,
            orthanc.dicom_port,
            orthanc.ae_title,
            [(instance.sop_class_uid, instance.sop_instance_uid)],
        )
    assert "not listed" in orthanc.log()
