"""Each process imports only what its room needs: the memory of an idle router.

`dicom-router` is the parent of every process (spawn re-imports it in each child), so a heavy
import in the command line is paid once per process: pydicom, pynetdicom, numpy and GDCM are
~60 MB. The supervisor and the broker need none of them; the acceptor needs pydicom and
pynetdicom but no pixel codecs. Checked two ways: the modules a fresh interpreter holds after
the same imports a spawned child makes, and the shared libraries the running processes mapped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import RouterFactory

pytestmark = pytest.mark.integration

DICOM = ("pydicom", "pynetdicom")
CODECS = ("numpy", "gdcm", "PIL")


def _loaded_after(*modules: str) -> set[str]:
    """Top-level packages loaded by a fresh interpreter after importing `modules`, the way a
    spawned child does (the console script's module first, then the supervisor's run_child,
    then the child's own entry module)."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(' '.join(sorted({n.split('.')[0] for n, m in sys.modules.items() if m})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return set(done.stdout.split())


def test_the_command_line_and_the_supervisor_load_no_dicom_or_codecs() -> None:
    loaded = _loaded_after("router.cli", "router.service.supervisor")
    assert not loaded & {*DICOM, *CODECS}, sorted(loaded & {*DICOM, *CODECS})


def test_the_broker_loads_no_dicom_or_codecs() -> None:
    loaded = _loaded_after("router.cli", "router.service.supervisor", "router.broker.main")
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
    for name, pid in [("supervisor", router.process.pid), ("broker", router.child_pid("broker")),
                      ("acceptor", router.child_pid("acceptor"))]:
        maps = _mapped_libraries(pid)
        assert numpy_lib not in maps and gdcm_lib not in maps, f"{name} maps a pixel codec"
    # The workers transcode: they may load them (this is what the others are spared).
    assert Path(f"/proc/{router.child_pid('worker-0')}/maps").exists()
