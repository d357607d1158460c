"""The audit trail's file on a full disk: a line the disk took only part of is cut back, so
the next line after space came back is whole and not glued to a torn one. A real small
tmpfs (needs root to mount it): its page is what makes a write come back short."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.audit.json_lines_file import JsonLinesFile

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "audit"
    mount.mkdir()
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a small tmpfs needs root, and CI must run this test as root")
        pytest.skip("mounting a small tmpfs needs root (make test runs as root, as CI does)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"cannot mount a small tmpfs: {done.stderr}"
    try:
        yield mount
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)


def test_a_line_cut_short_by_a_full_disk_is_removed(small_disk: Path) -> None:
    trail = JsonLinesFile(small_disk / "audit.jsonl")
    trail.append(json.dumps({"n": 1}))
    fill(small_disk / "filler")  # the file's first page still has room for part of a line
    with pytest.raises(OSError):
        trail.append(json.dumps({"n": 2, "pad": "x" * 10_000}))
    assert (small_disk / "audit.jsonl").read_bytes() == b'{"n": 1}\n'

    (small_disk / "filler").unlink()
    trail.append(json.dumps({"n": 3}))
    trail.close()
    lines = (small_disk / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [1, 3]
