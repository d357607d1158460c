"""Read only the header tags that are needed from a spooled file: never the pixel data."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pydicom.multival import MultiValue


def read_tags(path: Path, keywords: Iterable[str]) -> dict[str, str]:
    """Values of `keywords` present in the file, as strings (multi-values joined with '\\').
    A dataset pydicom cannot read raises ValueError (or InvalidDicomError, OSError)."""
    wanted = list(keywords)
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=wanted)
    except RecursionError as exc:  # pydicom reads nested sequences recursively
        raise ValueError("sequences nested too deeply") from exc
    out: dict[str, str] = {}
    for keyword in wanted:
        value = ds.get(keyword)
        if value is None:
            continue
        if isinstance(value, MultiValue):
            out[keyword] = "\\".join(str(v) for v in value)
        else:
            out[keyword] = str(value)
    return out
