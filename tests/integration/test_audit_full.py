"""The audit trail's file on a full disk: a line the disk took only part of is cut back, so
the next line after space came back is whole and not glued to a torn one. A real small
tmpfs (needs root to mount it): its page is what makes a write come back short."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from router.audit.json_lines_file import JsonLinesFile
from tests.integration.conftest import fill_disk

pytestmark = pytest.mark.integration


def test_a_line_cut_short_by_a_full_disk_is_removed(
    small_tmpfs: Callable[[str], Path]
) -> None:
    small_disk = small_tmpfs("size=64k")
    trail = JsonLinesFile(small_disk / "audit.jsonl")
    trail.append(json.dumps({"n": 1}))
    fill_disk(small_disk / "filler")  # the file's first page still has room for part of a line
    with pytest.raises(OSError):
        trail.append(json.dumps({"n": 2, "pad": "x" * 10_000}))
    assert (small_disk / "audit.jsonl").read_bytes() == b'{"n": 1}\n'

    (small_disk / "filler").unlink()
    trail.append(json.dumps({"n": 3}))
    trail.close()
    lines = (small_disk / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [1, 3]
