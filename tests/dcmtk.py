"""Drive real DCMTK processes (storescp, storescu, echoscu) on 127.0.0.1 in tests.

Every wait is bounded and every process started here is ended by its own handle.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from pydicom.filereader import read_file_meta_info

LOCALHOST = "127.0.0.1"
# A DICOM association carries at most 128 presentation contexts (odd IDs 1..255).
MAX_PRESENTATION_CONTEXTS = 128


def dcmtk_env() -> dict[str, str]:
    """os.environ plus TCP_NODELAY=1: without it DCMTK is ~100x slower on loopback."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


# Listeners' ports come from below Linux's ephemeral range (32768-60999), where connect()
# takes the local ports of outgoing connections: with two pytest-xdist workers, the other
# worker's thousands of connections took a port between its pick and a storescp's bind
# ("Address already in use", three picks in a row). Each worker picks from its own slice.
TEST_PORTS = range(20000, 32768)


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under xdist
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "") or 1)
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = len(TEST_PORTS) // max(workers, 1)
    start = TEST_PORTS.start + (index % max(workers, 1)) * size
    return range(start, start + size)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


# Ports handed out lately by this process. A test that keeps a port free on purpose (a
# destination that is down until it starts one there) must not see it handed to the next
# peer it starts (a fallback test failed in CI with no delivery attempt logged in 30 s, as
# when its BACKUP storescp had drawn the "down" PACS's port and took its instances).
_RECENT: collections.deque[int] = collections.deque(maxlen=1024)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago (all held open while picking),
    from this test worker's slice of TEST_PORTS, none handed out in the last 1,024."""
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        for port in random.sample(_port_slice(), 200):
            if port in _RECENT:
                continue
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                continue  # taken, or a recent connection on it lingers: another one
            ports.append(port)
            if len(ports) == count:
                _RECENT.extend(ports)
                return ports
    raise RuntimeError(f"no {count} free ports among 200 tried in {_port_slice()}")


def require_dcmtk(*tools: str) -> None:
    """Raise RuntimeError naming any DCMTK tool missing from PATH."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"DCMTK tools not on PATH: {', '.join(missing)}")


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate, then kill after grace seconds; always reap."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


class StoreSCP:
    """A storescp accepting every transfer syntax and storing bit-preserved files.

    ``with StoreSCP(tmp_path / "in", "PEER") as scp: ...`` starts it on a free port
    (or ``port``) and waits until the port accepts connections.
    """

    def __init__(
        self,
        output_dir: Path,
        ae_title: str = "STORESCP",
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        nagle: bool = False,
    ) -> None:
        self.output_dir = output_dir
        # nagle: DCMTK's own default (since 3.6.2), as a PACS built on it runs; the tests'
        # default is TCP_NODELAY=1 (dcmtk_env), which hides 40 ms per message otherwise.
        self.nagle = nagle
        self.ae_title = ae_title
        self.port = port if port is not None else 0
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._fixed_port = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        # +B: store the received bytes as they came (no re-encoding by storescp).
        # +xa: accept every transfer syntax DCMTK knows. -dhl: no reverse DNS lookups.
        return [
            "storescp",
            "+B",
            "+xa",
            "-dhl",
            "-od",
            str(self.output_dir),
            "-aet",
            self.ae_title,
            *self.extra_args,
            str(self.port),
        ]

    def start(self) -> None:
        require_dcmtk("storescp")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Closed in __exit__: the log lives as long as the process, not one block.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        # A free_port() may be taken by someone else before storescp binds: retry.
        attempts = 1 if self._fixed_port else 3
        for _ in range(attempts):
            if not self._fixed_port:
                self.port = free_port()
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ) if self.nagle else dcmtk_env(),
            )
            if self._wait_ready():
                return
            _stop_process(self._proc, self.stop_timeout)
        raise RuntimeError(f"storescp did not start on port {self.port}:\n{self.log()}")

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if _port_accepts(LOCALHOST, self.port):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc, self.stop_timeout)

    def kill(self) -> None:
        """kill -9: a destination that crashes (start() brings it back on the same port)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """Everything storescp printed so far (useful in assertion messages)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        self._log.seek(0, os.SEEK_END)
        return text

    def received_files(self) -> list[Path]:
        """Files storescp wrote completely, sorted by path.

        With +B storescp writes each file as the data arrives: a file it still holds open is
        half-written, and counting it let a test read a file without its DICM prefix. Listed
        first, then left out if open: a file closed in between is complete either way."""
        files = [p for p in self.output_dir.rglob("*") if p.is_file()]
        writing = self._files_being_written()
        return sorted(p for p in files if p.resolve() not in writing)

    def _files_being_written(self) -> set[Path]:
        """Files open in storescp or in its children (--fork)."""
        if self._proc is None:
            return set()
        pids = {self._proc.pid}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(entry.path, "stat").read_text()
                    if int(stat[stat.rindex(")") + 2:].split()[1]) == self._proc.pid:
                        pids.add(int(entry.name))
        open_files: set[Path] = set()
        for pid in pids:
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        open_files.add(Path(os.readlink(fd.path)))
        return open_files

    def __enter__(self) -> StoreSCP:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


def _expand(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    return files


def _presentation_contexts(files: Iterable[Path]) -> list[tuple[str, str]]:
    """Distinct (SOP class, transfer syntax) pairs of the files, from their file meta."""
    pairs: set[tuple[str, str]] = set()
    for path in files:
        meta = read_file_meta_info(path)
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    return sorted(pairs)


def _association_config(pairs: Sequence[tuple[str, str]]) -> str:
    """A storescu -xf config proposing one context per pair, each with exactly one syntax.

    With a single syntax per context the SCP cannot pick another one, and storescu
    finds the context matching the file's own syntax, so nothing is converted.
    """
    syntaxes = sorted({ts for _, ts in pairs})
    ts_names = {ts: f"TS{i}" for i, ts in enumerate(syntaxes, 1)}
    lines = ["[[TransferSyntaxes]]"]
    for ts in syntaxes:
        lines += [f"[{ts_names[ts]}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    lines += [
        f"PresentationContext{i} = {sop}\\{ts_names[ts]}" for i, (sop, ts) in enumerate(pairs, 1)
    ]
    lines += ["[[Profiles]]", "[AsIs]", "PresentationContexts = Contexts", ""]
    return "\n".join(lines)


def run_storescu(
    files: Iterable[Path],
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (or directories, recursively) in one association, each in its own syntax.

    Raises ValueError when the files need more than 128 presentation contexts, and
    subprocess.TimeoutExpired (after killing storescu) when it runs over timeout.
    Check ``returncode``: storescu stops at the first failed store unless ``-nh``.
    """
    require_dcmtk("storescu")
    inputs = list(files)
    pairs = _presentation_contexts(_expand(inputs))
    if not pairs:
        raise ValueError("no files to send")
    if len(pairs) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(f"{len(pairs)} SOP class/syntax pairs exceed one association")
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        config = Path(tmp) / "storescu.cfg"
        config.write_text(_association_config(pairs))
        seconds = str(max(1, int(timeout)))
        command = [
            "storescu",
            "-xf",
            str(config),
            "AsIs",
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            "-to",
            seconds,
            "-ta",
            seconds,
            *extra_args,
        ]
        if any(path.is_dir() for path in inputs):
            command += ["+sd", "+r"]  # scan directories given as inputs
        command += [host, str(port), *(str(path) for path in inputs)]
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=dcmtk_env(),
            timeout=timeout,
            check=False,
        )


def run_echoscu(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "ECHOSCU",
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """One C-ECHO; returncode 0 means the peer answered with success."""
    require_dcmtk("echoscu")
    seconds = str(max(1, int(timeout)))
    command = [
        "echoscu",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        "-to",
        seconds,
        "-ta",
        seconds,
        host,
        str(port),
    ]
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=timeout,
        check=False,
    )
