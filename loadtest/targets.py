"""The systems under test: each case starts what it needs in front of the destination.

A case is a context manager ``case(env)`` that yields an Endpoint (where senders
connect, and the root pid whose process tree is the "router" being measured).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadtest.peers import DEST_AE, TlsFiles, destination
from tests.dcmtk import LOCALHOST, StoreSCP, dcmtk_env, free_port, free_ports

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@dataclass
class CaseEnv:
    workdir: Path
    dest_dir: Path
    tls: TlsFiles | None
    fork: bool = True  # False: the destination serves one association at a time


@dataclass
class Endpoint:
    port: int
    called_ae: str
    pid: int | None  # root of the measured process tree (None: nothing between)
    metrics_url: str | None = None
    log: Path | None = None


class Unavailable(Exception):
    """The case cannot run here (missing tool, unsupported option); reported, not fatal."""


Case = Callable[[CaseEnv], AbstractContextManager[Endpoint]]


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout}s: {_tail(log)}")


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def _process(command: list[str], log: Path, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            yield proc
        finally:
            _stop(proc)


@contextmanager
def _plain_destination(env: CaseEnv) -> Iterator[StoreSCP]:
    with destination(env.dest_dir, fork=env.fork) as scp:
        yield scp


# --- 1. direct: storescu -> storescp -------------------------------------------------


@contextmanager
def direct(env: CaseEnv) -> Iterator[Endpoint]:
    with destination(env.dest_dir, env.tls, fork=env.fork) as scp:
        yield Endpoint(scp.port, DEST_AE, None)


def single_association(case: Case) -> Case:
    """The same case in front of a storescp without --fork (one association at a time)."""
    @contextmanager
    def wrapped(env: CaseEnv) -> Iterator[Endpoint]:
        env.fork = False
        with case(env) as endpoint:
            yield endpoint
    return wrapped


# --- 2. the naive pynetdicom forwarder ----------------------------------------------


@contextmanager
def naive(env: CaseEnv) -> Iterator[Endpoint]:
    with _plain_destination(env) as scp:
        port = free_port()
        command = [sys.executable, "-m", "loadtest.naive_forwarder", "--port", str(port),
                   "--dest-port", str(scp.port), "--dest-ae", DEST_AE]
        if env.tls is not None:
            command += ["--tls-cert", str(env.tls.cert), "--tls-key", str(env.tls.key)]
        log = env.workdir / "naive.log"
        with _process(command, log, cwd=REPO) as proc:
            _wait_port(port, proc, 30, log)
            yield Endpoint(port, "NAIVE", proc.pid, log=log)


@contextmanager
def durable_receiver(env: CaseEnv) -> Iterator[Endpoint]:
    """The floor of any receiver under the ack rule (loadtest/durable_receiver.py): it is
    the destination itself, so nothing sits between it and env.dest_dir."""
    if env.tls is not None:
        raise Unavailable("the durable floor is measured over plain TCP only")
    port = free_port()
    command = [sys.executable, "-m", "loadtest.durable_receiver", "--port", str(port),
               "--folder", str(env.dest_dir)]
    log = env.workdir / "durable-receiver.log"
    with _process(command, log, cwd=REPO) as proc:
        _wait_port(port, proc, 30, log)
        yield Endpoint(port, "FLOOR", proc.pid, log=log)


# --- 3. Orthanc with a Lua auto-routing script --------------------------------------

_LUA = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
   SendToModality(instanceId, 'dest')
   Delete(instanceId)
end
"""


def orthanc_available() -> bool:
    return _which("Orthanc") is not None


def _which(tool: str) -> str | None:
    import shutil

    return shutil.which(tool)


def orthanc_config(env: CaseEnv, dicom_port: int, dest_port: int) -> dict[str, object]:
    (env.workdir / "autoroute.lua").write_text(_LUA)
    config: dict[str, object] = {
        "Name": "bench",
        "StorageDirectory": str(env.workdir / "orthanc-storage"),
        "IndexDirectory": str(env.workdir / "orthanc-index"),
        "StorageCompression": False,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": True,
        # One DICOM server thread per sender, up to the largest sender count.
        "DicomThreadsCount": 16,
        "DicomModalities": {"dest": [DEST_AE, LOCALHOST, dest_port]},
        "DicomAssociationCloseDelay": 5,
        "LuaScripts": [str(env.workdir / "autoroute.lua")],
        "Plugins": [],
        # No HTTP: Orthanc 1.10 cannot bind it to 127.0.0.1 only, and nothing needs it.
        "HttpServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "ConcurrentJobs": 2,
        "OverwriteInstances": True,
        "SaveJobs": False,
        "MaximumPduLength": 131072,
    }
    if env.tls is not None:
        config.update({
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(env.tls.cert),
            "DicomTlsPrivateKey": str(env.tls.key),
            "DicomTlsTrustedCertificates": str(env.tls.cert),
            "DicomTlsRemoteCertificateRequired": False,
        })
    return config


@contextmanager
def orthanc(env: CaseEnv) -> Iterator[Endpoint]:
    if not orthanc_available():
        raise Unavailable("Orthanc is not installed (scripts/install-bench-deps.sh)")
    with _plain_destination(env) as scp:
        port = free_port()
        config_path = env.workdir / "orthanc.json"
        config_path.write_text(json.dumps(orthanc_config(env, port, scp.port), indent=1))
        log = env.workdir / "orthanc.log"
        # TCP_NODELAY=1: Orthanc's DICOM layer is DCMTK, which reads it like storescu does.
        with _process(["Orthanc", str(config_path)], log, env=dcmtk_env()) as proc:
            _wait_port(port, proc, 60, log)
            yield Endpoint(port, "ORTHANC", proc.pid, log=log)


# --- 4. this router ------------------------------------------------------------------


def router_config(env: CaseEnv, port: int, metrics_port: int, dest_port: int,
                  tuned: bool, acceptors: int | None = None, tls_out: bool = False) -> str:
    listen = f"{{host: {LOCALHOST}, port: {port}"
    if acceptors is not None:
        listen += f", acceptors: {acceptors}"
    if tuned:
        listen += ", max_pdu: 1048576"
    if env.tls is not None:
        listen += f", tls: {{mode: tls, cert: {env.tls.cert}, key: {env.tls.key}}}"
    listen += "}"
    lines = [
        "ae_title: DICOM-ROUTER",
        f"listen: {listen}",
        f"spool: {{path: {env.workdir / 'spool'}"
        + (", duplicate_window: 0}" if tuned else "}"),
        f"metrics: {{host: {LOCALHOST}, port: {metrics_port}}}",
        "destinations:",
        f"  pacs: {{type: dicom, ae_title: {DEST_AE}, host: {LOCALHOST}, port: {dest_port}, "
        + (f"tls: {{mode: tls, ca: {env.tls.cert}}}, " if tls_out and env.tls else "")
        + ("max_parallel: 16}" if tuned else "max_parallel: 4}"),
        "rules: [{name: all, forward: [pacs]}]",
    ]
    if tuned:
        lines += ["workers: 2", "worker_threads: 8", "log_level: WARNING"]
    return "\n".join(lines) + "\n"


TUNED_SETTINGS = ("listen.max_pdu 1 MiB, worker_threads 8, max_parallel 16, "
                  "duplicate_window 0 (no ledger), log_level WARNING")


def _router_bin() -> str:
    return str(VENV_BIN / "dicom-router")


def check_router_config(path: Path) -> str | None:
    """None when `dicom-router check-config` accepts the file, else its message."""
    result = subprocess.run([_router_bin(), "check-config", str(path)], capture_output=True,
                            text=True, check=False)
    return None if result.returncode == 0 else (result.stderr or result.stdout).strip()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"router exited with {proc.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"router not ready after {timeout}s: {_tail(log)}")


def _router(tuned: bool, acceptors: int | None = None, tls_out: bool = False) -> Case:
    @contextmanager
    def case(env: CaseEnv) -> Iterator[Endpoint]:
        if tls_out and env.tls is None:
            raise Unavailable("forwards over TLS: run it with --transports tls")
        with (destination(env.dest_dir, env.tls, fork=env.fork) if tls_out
              else _plain_destination(env)) as scp:
            port, metrics_port = free_ports(2)
            config = env.workdir / "router.yaml"
            config.write_text(router_config(env, port, metrics_port, scp.port, tuned,
                                            acceptors, tls_out))
            problem = check_router_config(config)
            if problem is not None:
                what = "TLS listener" if env.tls is not None else "config"
                raise Unavailable(f"router does not accept the {what}: {problem[:200]}")
            log = env.workdir / "router.log"
            run_env = dict(os.environ)
            with _process([_router_bin(), "run", "--config", str(config)], log,
                          env=run_env, cwd=env.workdir) as proc:
                base = f"http://{LOCALHOST}:{metrics_port}"
                _wait_ready(base + "/readyz", proc, 60, log)
                yield Endpoint(port, "DICOM-ROUTER", proc.pid, base + "/metrics", log)
    return case


router_default = _router(tuned=False)
router_tuned = _router(tuned=True)

CASES: dict[str, tuple[str, Case]] = {
    "direct": ("DCMTK storescu -> storescp (wire baseline)", direct),
    "naive": ("naive pynetdicom forwarder (loadtest/naive_forwarder.py)", naive),
    "durable-receiver": ("minimal receiver on the router's engine, one fsync per instance, "
                         "no forwarding (loadtest/durable_receiver.py): the durable floor",
                         durable_receiver),
    "orthanc": ("Orthanc 1.x + Lua OnStoredInstance auto-routing", orthanc),
    "router": ("dicom-router, default config", router_default),
    "router-tuned": (f"dicom-router, tuned ({TUNED_SETTINGS})", router_tuned),
    # TLS on both legs, as to a PACS or cloud archive that takes only TLS (with --transports
    # tls; the router case there forwards in plain).
    "router-tls-out": ("dicom-router, default config, forwarding over TLS too",
                       _router(tuned=False, tls_out=True)),
    # A destination that serves one association at a time (storescp without --fork, like
    # many PACS): the router must learn it; x direct is against direct-1assoc.
    "direct-1assoc": ("DCMTK storescu -> storescp without --fork (one association at a "
                      "time)", single_association(direct)),
    "router-1assoc": ("dicom-router, default config, to storescp without --fork",
                      single_association(router_default)),
    # listen.acceptors against each other (not in the default matrix: --cases names them).
    "router-acceptors-1": ("dicom-router, default config, listen.acceptors 1",
                           _router(tuned=False, acceptors=1)),
    "router-acceptors-2": ("dicom-router, default config, listen.acceptors 2",
                           _router(tuned=False, acceptors=2)),
}
# Each case's baseline for "x direct".
BASELINE = {"direct-1assoc": "direct-1assoc", "router-1assoc": "direct-1assoc"}


def scrape(url: str) -> dict[str, float]:
    """Metric lines of the router's /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                continue
    return values


def delivered(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items()
               if k.startswith("dicom_router_instances_forwarded_total") and
               'result="delivered"' in k)
