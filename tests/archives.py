"""Real query/retrieve archives for tests: DCMTK's dcmqrscp and Orthanc, on 127.0.0.1.

- ``make_study_set`` writes a small patient -> study -> series -> instance hierarchy of Part 10
  files and returns a ``StudySet`` that describes it, so a test can compute what a C-FIND,
  C-GET or C-MOVE must answer.
- ``Dcmqrscp`` and ``Orthanc`` are context managers that start an archive holding a study set
  on free ports and stop it by its own handle.
- ``run_findscu``, ``run_getscu`` and ``run_movescu`` drive the DCMTK query/retrieve tools;
  ``CommitmentRequester`` asks for storage commitment (N-ACTION) with pynetdicom and
  collects the N-EVENT-REPORT.
- ``instance_mismatches`` compares what a peer received with what was sent.

Every wait has a deadline, and DCMTK runs with TCP_NODELAY=1 (see tests/dcmtk.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from tests.dcmtk import LOCALHOST, dcmtk_env, free_ports, require_dcmtk, run_echoscu
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


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class _Server:
    """One server process in its own session (so forked children stop with it), a log in a
    temporary file, start retried on fresh ports, stop by process group."""

    name = "server"

    def __init__(self, startup_timeout: float, stop_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # Subclasses: choose ports and write config, give the command, say when it is ready.
    def _prepare(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, attempts: int = 3) -> None:
        # Closed in close(): the log lives as long as the process.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        for _ in range(attempts):
            self._prepare()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dcmtk_env(),
                start_new_session=True,
            )
            if self._wait_ready():
                return
            self.stop()  # most likely a port taken since free_ports(): try fresh ones
        raise RuntimeError(f"{self.name} did not start:\n{self.log()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if self._ready():
                return True
            time.sleep(0.05)
        return False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=self.stop_timeout)
        _signal_group(proc, signal.SIGKILL)  # forked children still serving an association

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        self._log.seek(0, os.SEEK_END)
        return text

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The group id is the pid of the process we started (start_new_session=True).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _echoes(port: int, ae_title: str) -> bool:
    """A C-ECHO succeeds. (A bare connect() would make dcmqrscp log an association error;
    echoscu fails at once while nothing listens.)"""
    return run_echoscu(LOCALHOST, port, called_ae=ae_title, timeout=5.0).returncode == 0


def _input_files(source: StudySet | Iterable[Path] | None) -> list[Path]:
    if source is None:
        return []
    if isinstance(source, StudySet):
        return source.files
    return list(source)


MoveDestination = tuple[str, str, int]  # (AE title, host, port)


class Dcmqrscp(_Server):
    """DCMTK's dcmqrscp serving one storage area under ``ae_title``, indexed from files.

    C-FIND (Patient and Study Root), C-GET and C-MOVE work; C-MOVE destinations must be
    listed in ``move_destinations`` (dcmqrscp's HostTable; an IP address works as host).
    Every calling AE has read/write access. A child process serves each association
    (--fork), so concurrent associations work; Debian's dcmqrscp 3.6.7 --single-process
    segfaults when its first association ends, so it is not offered.
    """

    name = "dcmqrscp"

    def __init__(
        self,
        workdir: Path,
        source: StudySet | Iterable[Path] | None = None,
        ae_title: str = "ARCHIVE",
        *,
        move_destinations: Sequence[MoveDestination] = (),
        max_pdu: int = 65536,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(startup_timeout, stop_timeout)
        self.workdir = workdir
        self.ae_title = ae_title
        self.storage = workdir / "storage" / ae_title
        self.config_path = workdir / "dcmqrscp.cfg"
        self.move_destinations = tuple(move_destinations)
        self.max_pdu = max_pdu
        self.extra_args = tuple(extra_args)
        self.port = 0
        self._files = _input_files(source)

    def start(self, attempts: int = 3) -> None:
        require_dcmtk("dcmqrscp", "dcmqridx")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.add(self._files)
        super().start(attempts)

    def add(self, files: Iterable[Path]) -> None:
        """Copy files into the storage area and index them (also works while running)."""
        copies = []
        for path in files:
            target = self.storage / path.name
            shutil.copyfile(path, target)
            copies.append(str(target))
        for start in range(0, len(copies), 200):
            _run_tool(["dcmqridx", str(self.storage), *copies[start : start + 200]], 60.0, True)

    def _prepare(self) -> None:
        self.port = free_ports(1)[0]
        self.config_path.write_text(self.config_text())

    def config_text(self) -> str:
        hosts = [
            f"dest{n} = ({ae}, {host}, {port})"
            for n, (ae, host, port) in enumerate(self.move_destinations, 1)
        ]
        return "\n".join(
            [
                f"NetworkTCPPort = {self.port}",
                f"MaxPDUSize = {self.max_pdu}",
                "MaxAssociations = 32",
                "HostTable BEGIN",
                *hosts,
                "HostTable END",
                "VendorTable BEGIN",
                "VendorTable END",
                "AETable BEGIN",
                # AE, storage area, access, (max studies (500 at most), bytes per study), peers
                f"{self.ae_title} {self.storage} RW (500, 1024mb) ANY",
                "AETable END",
                "",
            ]
        )

    def _command(self) -> list[str]:
        # -dhl: no reverse DNS lookup per association.
        return [
            "dcmqrscp",
            "-c",
            str(self.config_path),
            "--fork",
            "-dhl",
            *self.extra_args,
            str(self.port),
        ]

    def _ready(self) -> bool:
        return _echoes(self.port, self.ae_title)


ModalityEntry = tuple[str, str, int] | Mapping[str, Any]


class Orthanc(_Server):
    """Orthanc with its storage and index in ``workdir``, loaded with files over REST.

    Every C-ECHO/C-STORE/C-FIND/C-GET/C-MOVE is allowed from any calling AE and the called AE
    is not checked. ``modalities`` become ``DicomModalities`` (name -> [AE, host, port], or
    Orthanc's object form): C-MOVE destinations, and storage commitment requesters (Orthanc
    accepts N-ACTION only from a listed AE and reports on a new association to it).
    ``config`` entries override the generated configuration.
    """

    name = "Orthanc"
    binary = "/usr/sbin/Orthanc"

    def __init__(
        self,
        workdir: Path,
        source: StudySet | Iterable[Path] | None = None,
        ae_title: str = "ORTHANC",
        *,
        modalities: Mapping[str, ModalityEntry] | None = None,
        config: Mapping[str, Any] | None = None,
        verbose: bool = False,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(startup_timeout, stop_timeout)
        self.workdir = workdir
        self.ae_title = ae_title
        self.config_path = workdir / "orthanc.json"
        self.modalities = dict(modalities or {})
        self.overrides = dict(config or {})
        self.verbose = verbose
        self.http_port = self.dicom_port = 0
        self._files = _input_files(source)

    def start(self, attempts: int = 3) -> None:
        if not (Path(self.binary).exists() or shutil.which("Orthanc")):
            raise RuntimeError("Orthanc is not installed (scripts/install-test-deps.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().start(attempts)
        self.upload(self._files)

    def _prepare(self) -> None:
        self.http_port, self.dicom_port = free_ports(2)
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    def config(self) -> dict[str, Any]:
        modalities = {
            name: entry if isinstance(entry, Mapping) else list(entry)
            for name, entry in self.modalities.items()
        }
        return {
            "Name": self.ae_title,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": modalities,
            "Plugins": [],
            "SaveJobs": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            **self.overrides,
        }

    def _command(self) -> list[str]:
        binary = self.binary if Path(self.binary).exists() else "Orthanc"
        verbose = ["--verbose"] if self.verbose else []
        return [binary, *verbose, "--no-jobs", str(self.config_path)]

    def _ready(self) -> bool:
        try:
            self.rest("/system", timeout=1.0)
        except (OSError, urllib.error.URLError):
            return False
        return _echoes(self.dicom_port, self.ae_title)

    def rest(
        self,
        path: str,
        method: str = "GET",
        body: bytes | Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        timeout: float = 30.0,
    ) -> Any:
        """Call the REST API; JSON answers are decoded, others returned as bytes.

        Raises urllib.error.HTTPError for an error status.
        """
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{LOCALHOST}:{self.http_port}{path}", data=data, method=method
        )
        if isinstance(body, bytes):
            request.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload: bytes = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(payload)
            return payload

    def upload(self, files: Iterable[Path]) -> list[str]:
        """POST each file to /instances; return Orthanc's instance IDs."""
        ids = []
        for path in files:
            answer = self.rest("/instances", "POST", path.read_bytes())
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise RuntimeError(f"Orthanc refused {path}: {answer}")
            ids.append(str(answer["ID"]))
        return ids

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Declare (or replace) a DicomModalities entry at run time (PUT /modalities/name)."""
        self.rest(f"/modalities/{name}", "PUT", {"AET": ae_title, "Host": host, "Port": port})


# --------------------------------------------------------------------------------------------
# DCMTK query/retrieve tools
# --------------------------------------------------------------------------------------------

Model = Literal["patient", "study", "worklist"]
_MODEL_FLAGS = {"patient": "-P", "study": "-S", "worklist": "-W"}
# findscu and getscu exit 0 even when the final response is a failure: read the status that
# -v prints ("Success", "Refused: MoveDestinationUnknown", "Failed: UnableToProcess"...).
_FINAL_STATUS = {
    "findscu": re.compile(r"Received Final Find Response \((.*)\)\s*$", re.M),
    "getscu": re.compile(r"Received C-GET Response \((.*)\)\s*$", re.M),
    "movescu": re.compile(r"Received Final Move Response \((.*)\)\s*$", re.M),
}


@dataclass(frozen=True)
class ToolResult:
    """How a query/retrieve tool ended: its final DIMSE status as DCMTK names it ("" when
    no final response came: association refused, aborted, timed out), exit code, output."""

    status: str
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.status == "Success" and self.returncode == 0


class ToolError(RuntimeError):
    """A DCMTK tool failed; ``result`` carries its status and output."""

    def __init__(self, tool: str, result: ToolResult) -> None:
        super().__init__(
            f"{tool} ended with status {result.status or 'none'!r} "
            f"(exit {result.returncode}):\n{result.output}"
        )
        self.result = result


def _run_tool(command: list[str], timeout: float, check: bool) -> ToolResult:
    """Run a tool to completion (killed after timeout); ToolError unless ok, with check."""
    done = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    pattern = _FINAL_STATUS.get(command[0])
    statuses = pattern.findall(output) if pattern else []
    status = statuses[-1] if statuses else ("Success" if pattern is None else "")
    result = ToolResult(status, done.returncode, output)
    if check and not result.ok:
        raise ToolError(command[0], result)
    return result


def _qr_command(
    tool: str,
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str,
    level: str | None,
    keys: Mapping[str, str],
    model: Model,
    timeout: float,
    options: Sequence[str],
) -> list[str]:
    seconds = str(max(1, int(timeout)))
    command = [tool, "-v", _MODEL_FLAGS[model], "-aet", calling_ae, "-aec", called_ae]
    command += ["-to", seconds, "-ta", seconds, "-td", seconds, *options]
    if level is not None:
        command += ["-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in keys.items():
        command += ["-k", f"{keyword}={value}"]
    return [*command, host, str(port)]


def run_findscu(
    host: str,
    port: int,
    called_ae: str,
    level: str,
    keys: Mapping[str, str],
    model: Model = "study",
    extract_dir: Path | None = None,
    *,
    calling_ae: str = "FINDSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
    check: bool = True,
) -> list[Dataset]:
    """One C-FIND; returns the identifiers of the pending responses, in arrival order.

    ``keys`` are keywords (or gggg,eeee) to match or return ("" asks for the value);
    ``level`` is ignored for the worklist model. findscu -X writes the responses into
    extract_dir (a temporary folder by default), read back with pydicom. With check, raises
    ToolError unless the final response is Success.
    """
    require_dcmtk("findscu")
    with tempfile.TemporaryDirectory(prefix="findscu-") as tmp:
        folder = extract_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        command = _qr_command(
            "findscu",
            host,
            port,
            called_ae=called_ae,
            calling_ae=calling_ae,
            level=None if model == "worklist" else level,
            keys=keys,
            model=model,
            timeout=timeout,
            options=["-X", "-od", str(folder), *extra_args],
        )
        _run_tool(command, timeout, check)
        return [dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


def run_getscu(
    host: str,
    port: int,
    called_ae: str,
    level: str,
    keys: Mapping[str, str],
    output_dir: Path,
    model: Model = "study",
    *,
    calling_ae: str = "GETSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    check: bool = True,
) -> list[Path]:
    """One C-GET into output_dir (+B: stored as received); returns the files there, sorted.

    getscu proposes each storage SOP class with all uncompressed syntaxes in one context, so
    the archive sends in the syntax it prefers (dcmqrscp and Orthanc convert Implicit VR
    files to Explicit VR here). With check, raises ToolError unless the final status is
    Success (a Warning means some sub-operations failed).
    """
    require_dcmtk("getscu")
    output_dir.mkdir(parents=True, exist_ok=True)
    command = _qr_command(
        "getscu",
        host,
        port,
        called_ae=called_ae,
        calling_ae=calling_ae,
        level=level,
        keys=keys,
        model=model,
        timeout=timeout,
        options=["+B", "-od", str(output_dir), *extra_args],
    )
    _run_tool(command, timeout, check)
    return sorted(p for p in output_dir.rglob("*") if p.is_file())


def run_movescu(
    host: str,
    port: int,
    called_ae: str,
    level: str,
    keys: Mapping[str, str],
    move_destination: str,
    model: Model = "study",
    *,
    calling_ae: str = "MOVESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    check: bool = True,
) -> ToolResult:
    """One C-MOVE to move_destination (an AE the archive knows how to reach).

    Returns the final status; with check, raises ToolError unless it is Success. What
    arrived is for the destination to say.
    """
    require_dcmtk("movescu")
    command = _qr_command(
        "movescu",
        host,
        port,
        called_ae=called_ae,
        calling_ae=calling_ae,
        level=level,
        keys=keys,
        model=model,
        timeout=timeout,
        options=["-aem", move_destination, *extra_args],
    )
    return _run_tool(command, timeout, check)


# --------------------------------------------------------------------------------------------
# Storage commitment (pynetdicom)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitmentReport:
    """One N-EVENT-REPORT of the Storage Commitment Push Model."""

    event_type_id: int  # 1: all committed, 2: failures exist
    transaction_uid: str
    committed: tuple[tuple[str, str], ...]  # (SOP class, SOP instance)
    failed: tuple[tuple[str, str, int], ...]  # (SOP class, SOP instance, failure reason)
    reporter_ae: str  # the peer AE of the association that carried the report
    same_association: bool  # True when it came on the association of the N-ACTION


def _references(items: Iterable[Dataset], with_reason: bool) -> tuple[Any, ...]:
    out = []
    for item in items:
        pair = (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        out.append((*pair, int(item.FailureReason)) if with_reason else pair)
    return tuple(out)


class CommitmentRequester:
    """A storage commitment SCU (Evidence Creator) with a listener for the reports.

    ``with CommitmentRequester("MODALITY") as scu:`` listens on ``scu.port``; the SCP must
    know that AE, host and port to report on a new association (the IHE way, and what
    Orthanc does). ``request()`` sends the N-ACTION; ``wait_report()`` returns the
    N-EVENT-REPORT, from a new association or from the N-ACTION's own (``hold``).
    """

    def __init__(self, ae_title: str = "STGCMTSCU", *, port: int | None = None) -> None:
        self.ae_title = ae_title
        self.port = port or 0
        self._fixed_port = port is not None
        self._reports: dict[str, CommitmentReport] = {}
        self._arrived = threading.Condition()
        self._server: Any = None
        self._requesting: set[Any] = set()

    def __enter__(self) -> Self:
        listener = AE(self.ae_title)
        # The SCP opens the report association with itself as the SCP role: accept that.
        listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, self._on_report)]
        for _ in range(1 if self._fixed_port else 3):
            port = self.port if self._fixed_port else free_ports(1)[0]
            try:
                self._server = listener.start_server(
                    (LOCALHOST, port), block=False, evt_handlers=handlers
                )
            except OSError:
                continue
            self.port = port
            return self
        raise RuntimeError("storage commitment listener could not bind a port")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_report(self, event: Event) -> tuple[int, None]:
        info = event.event_information
        assoc = event.assoc
        peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
        report = CommitmentReport(
            event_type_id=event.event_type or 0,
            transaction_uid=str(info.TransactionUID),
            committed=_references(info.get("ReferencedSOPSequence", []), False),
            failed=_references(info.get("FailedSOPSequence", []), True),
            reporter_ae=str(peer.ae_title),
            same_association=event.assoc in self._requesting,
        )
        with self._arrived:
            self._reports[report.transaction_uid] = report
            self._arrived.notify_all()
        return 0x0000, None  # no Event Reply: Orthanc insists on none

    def request(
        self,
        host: str,
        port: int,
        called_ae: str,
        references: Iterable[tuple[str, str]],
        *,
        transaction_uid: str | None = None,
        hold: float = 0.0,
        timeout: float = 30.0,
    ) -> str:
        """Send one N-ACTION (Request Storage Commitment); return its Transaction UID.

        references are (SOP class, SOP instance) pairs. With ``hold`` the association stays
        open up to that many seconds for a report on it. Raises RuntimeError unless the
        N-ACTION response is Success.
        """
        uid = transaction_uid or generate_uid()
        action = Dataset()
        action.TransactionUID = uid
        action.ReferencedSOPSequence = [_reference(c, i) for c, i in references]
        requester = AE(self.ae_title)
        requester.add_requested_context(StorageCommitmentPushModel)
        requester.acse_timeout = requester.dimse_timeout = requester.network_timeout = timeout
        assoc = requester.associate(
            host,
            port,
            ae_title=called_ae,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )
        if not assoc.is_established:
            raise RuntimeError(f"association to {called_ae} at {host}:{port} failed")
        self._requesting.add(assoc)
        try:
            status, _ = assoc.send_n_action(
                action, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
            )
            if status.get("Status") != 0x0000:
                raise RuntimeError(f"N-ACTION answered {status or 'nothing (aborted)'}")
            if hold > 0:
                self._wait(uid, hold)
        finally:
            if assoc.is_established:
                assoc.release()
            self._requesting.discard(assoc)
        return uid

    def _wait(self, transaction_uid: str, timeout: float) -> CommitmentReport | None:
        with self._arrived:
            self._arrived.wait_for(lambda: transaction_uid in self._reports, timeout)
            return self._reports.get(transaction_uid)

    def wait_report(self, transaction_uid: str, timeout: float = 30.0) -> CommitmentReport:
        """The report for transaction_uid; TimeoutError if none arrives within timeout."""
        report = self._wait(transaction_uid, timeout)
        if report is None:
            raise TimeoutError(f"no N-EVENT-REPORT for {transaction_uid} in {timeout} s")
        return report


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item
