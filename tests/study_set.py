"""A generated patient -> study -> series -> instance hierarchy of Part 10 files for the
query/retrieve tests, and what a peer received compared with what was sent.

``make_study_set`` writes the files and returns a ``StudySet`` that describes them, so a test
can compute what a C-FIND, C-GET or C-MOVE must answer; ``instance_mismatches`` compares.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from tests.dicom_samples import EXPLICIT_VR_LE, IMPLICIT_VR_LE, dataset_digest, write_instance

# --------------------------------------------------------------------------------------------
# The study set
# --------------------------------------------------------------------------------------------

_NAMES = (
    "Doe^Jane",
    "Smith^John",
    "Garcia^Maria",
    "Nguyen^Thanh",
    "Okafor^Chinedu",
    "Kowalski^Anna",
    "Tanaka^Hiroshi",
    "Dubois^Claire",
)
# (modality, SOP class, study description) cycled over series.
_KINDS = (
    ("CT", CTImageStorage, "CT CHEST WITHOUT CONTRAST"),
    ("MR", MRImageStorage, "MR BRAIN"),
    ("OT", SecondaryCaptureImageStorage, "SECONDARY CAPTURE"),
)


@dataclass(frozen=True)
class Instance:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    instance_number: int


@dataclass(frozen=True)
class Series:
    series_instance_uid: str
    modality: str
    series_number: int
    description: str
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class Study:
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    description: str
    series: tuple[Series, ...]

    @property
    def instances(self) -> tuple[Instance, ...]:
        return tuple(i for s in self.series for i in s.instances)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted({s.modality for s in self.series}))

    @property
    def transfer_syntaxes(self) -> frozenset[str]:
        return frozenset(i.transfer_syntax for i in self.instances)


@dataclass(frozen=True)
class Patient:
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    studies: tuple[Study, ...]

    @property
    def instances(self) -> tuple[Instance, ...]:
        return tuple(i for s in self.studies for i in s.instances)


@dataclass(frozen=True)
class StudySet:
    folder: Path
    patients: tuple[Patient, ...]

    @property
    def studies(self) -> tuple[Study, ...]:
        return tuple(s for p in self.patients for s in p.studies)

    @property
    def instances(self) -> tuple[Instance, ...]:
        return tuple(i for p in self.patients for i in p.instances)

    @property
    def files(self) -> list[Path]:
        return [i.path for i in self.instances]

    def patient(self, patient_id: str) -> Patient:
        return next(p for p in self.patients if p.patient_id == patient_id)

    def study(self, study_instance_uid: str) -> Study:
        return next(s for s in self.studies if s.study_instance_uid == study_instance_uid)

    def patient_of(self, study: Study) -> Patient:
        return next(p for p in self.patients if study in p.studies)


def make_study_set(
    folder: Path,
    patients: int = 3,
    studies_per_patient: int = 2,
    series_per_study: int = 2,
    instances_per_series: int = 3,
    *,
    size_bytes: int = 4096,
    implicit_series: int = 1,
    id_prefix: str = "PAT",
) -> StudySet:
    """Write the hierarchy under folder/<PatientID>/<study>/<series>/ and describe it.

    Every instance is Explicit VR Little Endian except the last ``implicit_series`` series
    of the set (the last series of the last patient's last study first), which are Implicit
    VR Little Endian: tests that need byte-identical retrieves from any archive pick a study
    whose ``transfer_syntaxes`` is {EXPLICIT_VR_LE}. UIDs are fresh on each call; patient
    IDs, names, dates and accession numbers are deterministic (``id_prefix`` keeps two sets
    apart in one archive).
    """
    total_series = patients * studies_per_patient * series_per_study
    first_implicit = total_series - implicit_series
    plan = _Plan(folder, size_bytes, instances_per_series, first_implicit, id_prefix)
    built = tuple(plan.patient(p, studies_per_patient, series_per_study) for p in range(patients))
    return StudySet(folder, built)


@dataclass
class _Plan:
    folder: Path
    size_bytes: int
    instances_per_series: int
    first_implicit: int
    id_prefix: str
    study_counter: int = 0
    series_counter: int = 0

    def patient(self, index: int, studies: int, series: int) -> Patient:
        patient_id = f"{self.id_prefix}{index + 1:04d}"
        name = _NAMES[index % len(_NAMES)]
        if index >= len(_NAMES):
            name += f"{index // len(_NAMES) + 1}"
        tags: dict[str, object] = {
            "PatientID": patient_id,
            "PatientName": name,
            "PatientBirthDate": (date(1950, 3, 14) + timedelta(days=4019 * index)).strftime(
                "%Y%m%d"
            ),
            "PatientSex": "FM"[index % 2],
        }
        built = tuple(self.study(tags, s, series) for s in range(studies))
        return Patient(
            patient_id, name, str(tags["PatientBirthDate"]), str(tags["PatientSex"]), built
        )

    def study(self, patient_tags: dict[str, object], index: int, series: int) -> Study:
        k = self.study_counter
        self.study_counter += 1
        uid = generate_uid()
        study_date = (date(2023, 1, 9) + timedelta(days=37 * k)).strftime("%Y%m%d")
        study_time = f"{8 + k % 10:02d}{(7 * k) % 60:02d}00"
        description = _KINDS[k % len(_KINDS)][2]
        tags = {
            **patient_tags,
            "StudyInstanceUID": uid,
            "StudyDate": study_date,
            "StudyTime": study_time,
            "AccessionNumber": f"A{self.id_prefix}{k + 1:05d}",
            "StudyID": str(index + 1),
            "StudyDescription": description,
        }
        folder = self.folder / str(patient_tags["PatientID"]) / f"study{index + 1}"
        built = tuple(self.series(tags, folder, k + s, s) for s in range(series))
        return Study(
            uid,
            study_date,
            study_time,
            str(tags["AccessionNumber"]),
            str(index + 1),
            description,
            built,
        )

    def series(self, study_tags: dict[str, object], folder: Path, kind: int, index: int) -> Series:
        modality, sop_class, _ = _KINDS[kind % len(_KINDS)]
        syntax = IMPLICIT_VR_LE if self.series_counter >= self.first_implicit else EXPLICIT_VR_LE
        self.series_counter += 1
        uid = generate_uid()
        description = f"{modality} series {index + 1}"
        tags = {**study_tags, "SeriesNumber": index + 1, "SeriesDescription": description}
        folder = folder / f"series{index + 1}"
        instances = []
        for n in range(self.instances_per_series):
            sop_instance_uid = generate_uid()
            path = write_instance(
                folder,
                sop_class=sop_class,
                transfer_syntax=syntax,
                size_bytes=self.size_bytes,
                modality=modality,
                study_uid=str(study_tags["StudyInstanceUID"]),
                series_uid=uid,
                sop_instance_uid=sop_instance_uid,
                tags={**tags, "InstanceNumber": n + 1},
            )
            instances.append(Instance(path, sop_class, sop_instance_uid, syntax, n + 1))
        return Series(uid, modality, index + 1, description, tuple(instances))


def instance_mismatches(expected: Iterable[Instance], received: Iterable[Path]) -> list[str]:
    """What differs between the instances sent and the files a peer stored (empty: none).

    Same SOP Instance UIDs, once each. A file in the instance's own transfer syntax must have
    the same encoded dataset (dataset_digest); one that a peer converted to another syntax
    must decode to an equal dataset.
    """
    wanted = {i.sop_instance_uid: i for i in expected}
    problems: list[str] = []
    seen: set[str] = set()
    for path in received:
        meta = read_file_meta_info(path)
        uid = str(meta.MediaStorageSOPInstanceUID)
        if uid in seen:
            problems.append(f"{uid} received twice")
        seen.add(uid)
        instance = wanted.get(uid)
        if instance is None:
            problems.append(f"{uid} was not expected")
        elif str(meta.TransferSyntaxUID) == instance.transfer_syntax:
            if dataset_digest(path) != dataset_digest(instance.path):
                problems.append(f"{uid} differs in its encoded dataset")
        elif dcmread(path) != dcmread(instance.path):
            problems.append(f"{uid} differs after conversion to {meta.TransferSyntaxUID}")
    problems += [f"{uid} missing" for uid in sorted(wanted.keys() - seen)]
    return problems
