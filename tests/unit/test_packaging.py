"""The first commands a newcomer runs: `make run` without the test extras, `make test` with
them (also after a `make run`), and metadata pip does not warn about."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(target: str, venv: Path) -> str:
    done = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={venv}", target],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv that exists (its python is there) and is newer than pyproject.toml."""
    assert shutil.which("make"), "make runs the README's two commands: install it"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()
    return tmp_path


def _touch_newer(path: Path) -> None:
    path.touch()
    later = time.time() + 60
    os.utime(path, (later, later))


def test_make_run_installs_without_the_test_extras(venv: Path) -> None:
    commands = _dry_run("run", venv)
    assert "pip install -q -e .\n" in commands
    assert ".[test]" not in commands


def test_make_test_after_make_run_still_installs_the_extras(venv: Path) -> None:
    _touch_newer(venv / ".installed-run")  # what a `make run` left
    assert "pip install" not in _dry_run("run", venv)
    assert "pip install -q -e '.[test]'" in _dry_run("lint", venv)


def test_license_is_an_spdx_expression() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # not the deprecated table form
    assert "setuptools>=77" in project["build-system"]["requires"]  # PEP 639 support
