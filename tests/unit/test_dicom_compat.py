"""router/dicom/compat.py: one pynetdicom version check for every use of its internals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pynetdicom
import pytest

from router.core.errors import RouterError
from router.dicom import compat


def test_the_installed_pynetdicom_is_supported() -> None:
    assert compat.is_supported()
    compat.require_supported()


def test_another_version_is_refused_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    assert not compat.is_supported()
    with pytest.raises(RouterError, match=r"pynetdicom 3\.1\.0 .* 3\.0\.x only"):
        compat.require_supported()


def test_the_installed_version_is_read_without_importing_pynetdicom(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`dicom-router run` checks before it starts anything, in the supervisor, which never
    imports pynetdicom (the acceptor and workers import it on need): the version then comes
    from the installed package's metadata."""
    monkeypatch.delitem(sys.modules, "pynetdicom")
    monkeypatch.setattr(compat.metadata, "version", lambda name: "3.1.0")
    with pytest.raises(RouterError, match=r"pynetdicom 3\.1\.0 .* 3\.0\.x only"):
        compat.require_supported()
    assert "pynetdicom" not in sys.modules


def test_run_refuses_to_start_on_an_unsupported_pynetdicom(tmp_path: Path) -> None:
    """Before, the acceptor made the check at its start; since it loads pynetdicom on need
    only, `dicom-router run` makes it, with a message naming what to install (exit 1)."""
    code = ("import sys\nfrom importlib import metadata\n"
            "metadata.version = lambda name: '9.9.9'\n"
            "from router.cli.main import main\n"
            "sys.exit(main(['run']))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "pynetdicom 9.9.9 is installed" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "spool").exists()  # nothing was started
