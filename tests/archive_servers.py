"""Real query/retrieve archives for tests: DCMTK's dcmqrscp and Orthanc, on 127.0.0.1.

``Dcmqrscp`` and ``Orthanc`` are context managers that start an archive holding a study set
(tests/study_set.py) on free ports and stop it by its own handle. Every wait has a deadline,
and DCMTK runs with TCP_NODELAY=1 (see tests/dcmtk.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from tests.dcmtk import LOCALHOST, dcmtk_env, free_ports, require_dcmtk, run_echoscu
from tests.qr_tools import run_tool
from tests.study_set import StudySet

# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class _Server:
    """One server process in its own session (so forked children stop with it), a log in a
    temporary file, start retried on fresh ports, stop by process group."""

    name = "server"
    # DCMTK's own default (Nagle on, as a PACS built on DCMTK runs) instead of the tests'
    # TCP_NODELAY=1 (dcmtk_env), which hides 40 ms per message.
    nagle = False

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
                env=dict(os.environ) if self.nagle else dcmtk_env(),
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
        nagle: bool = False,
    ) -> None:
        super().__init__(startup_timeout, stop_timeout)
        self.nagle = nagle
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
            run_tool(["dcmqridx", str(self.storage), *copies[start : start + 200]], 60.0, True)

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
