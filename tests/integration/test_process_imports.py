"""Each process imports only what its room needs: the memory of an idle router.

`dicom-router` is the parent of every process (spawn re-imports it in each child), so a heavy
import in the command line is paid once per process: pydicom, pynetdicom, numpy and GDCM are
~60 MB. The supervisor and the broker need none of them; the acceptor and the workers load
pydicom and pynetdicom on need only, and no pixel codecs (a worker transcodes in a codec
process of its own, started when first needed: tests/integration/test_transforms.py). The
acceptor's C-STORE and C-ECHO path is the router's own engine: it loads pydicom for the first
header its rules or audit read (or whose first bytes do not tell), pynetdicom with the first
relayed request. Checked two ways: the modules a fresh interpreter holds after the same
imports a spawned child makes, and the shared libraries the running processes mapped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.dcmtk import LOCALHOST, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.conftest import RouterFactory
from tests.integration.router_process import wait_for

pytestmark = pytest.mark.integration

DICOM = ("pydicom", "pynetdicom")
CODECS = ("numpy", "gdcm", "PIL")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _loaded_after(*modules: str) -> set[str]:
    """Top-level packages loaded by a fresh interpreter after importing `modules`, the way a
    spawned child does (the console script's module first, then run_child's module,
    then the child's own entry module)."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(' '.join(sorted({n.split('.')[0] for n, m in sys.modules.items() if m})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return set(done.stdout.split())


def test_the_command_line_and_the_supervisor_load_no_dicom_or_codecs() -> None:
    loaded = _loaded_after("router.cli", "router.service.supervisor")
    assert not loaded & {*DICOM, *CODECS}, sorted(loaded & {*DICOM, *CODECS})


def test_the_supervisor_loads_the_console_only_when_it_is_on() -> None:
    """The console's pages and argon2 (whose import hashes a dummy password: 0.14 s of CPU
    at every start) wait for a config with console.enabled (wiring.build)."""
    loaded = _loaded_after("router.cli", "router.service.supervisor",
                           "router.service.console.wiring")
    assert "argon2" not in loaded


def test_the_broker_loads_no_dicom_or_codecs() -> None:
    loaded = _loaded_after("router.cli", "router.service.child_process", "router.broker.main")
    assert not loaded & {*DICOM, *CODECS}, sorted(loaded & {*DICOM, *CODECS})


def test_the_acceptor_loads_no_dicom_or_codecs() -> None:
    """It negotiates from router/dicom/uid_tables.py, not from pynetdicom's lists."""
    loaded = _loaded_after("router.cli", "router.service.child_process", "router.acceptor.main")
    assert not loaded & {*DICOM, *CODECS}, sorted(loaded & {*DICOM, *CODECS})


def test_a_worker_loads_dicom_only_when_its_work_needs_it() -> None:
    """pynetdicom with the first relayed request, pydicom with the first folder delivery,
    morph, de-identification or transcode; the C-STORE sender is the router's engine."""
    loaded = _loaded_after("router.cli", "router.service.child_process", "workers.main")
    assert not loaded & {*DICOM, *CODECS}, sorted(loaded & {*DICOM, *CODECS})


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_running_processes_map_codecs_only_where_needed(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    router = start_router({"destinations": {"archive": {"type": "folder",
                                                        "path": str(tmp_path / "archive")}},
                           "rules": [{"name": "all", "forward": ["archive"]}]})
    numpy_lib, gdcm_lib = "_multiarray_umath", "_gdcmswig"
    assert router.process is not None
    processes = [("supervisor", router.process.pid), ("broker", router.child_pid("broker")),
                 ("acceptor-1", router.child_pid("acceptor-1")),
                 ("worker-0", router.child_pid("worker-0"))]
    for name, pid in processes:
        maps = _mapped_libraries(pid)
        assert numpy_lib not in maps and gdcm_lib not in maps, f"{name} maps a pixel codec"
    # ...and they work so: an instance goes through, with the same worker processes.
    source = write_instance(tmp_path / "in", sop_class=CT_IMAGE,
                            transfer_syntax=EXPLICIT_VR_LE)
    assert run_storescu([source], LOCALHOST, router.port, called_ae="DICOM-ROUTER").returncode == 0
    assert wait_for(lambda: len(list((tmp_path / "archive").rglob("*.dcm"))) == 1)
    assert [router.child_pid(name) for name, _ in processes[1:]] == \
        [pid for _, pid in processes[1:]]
