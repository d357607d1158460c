"""Read only the header tags that are needed from a spooled file: never the pixel data."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue

# What pydicom raises, besides ValueError, for a hostile dataset (found with crafted and
# fuzzed files, tests/unit/test_header_tags.py): an unknown VR (NotImplementedError), nesting
# past Python's recursion limit (RecursionError; both are RuntimeErrors), a value whose length
# does not fit its VR, a truncated element header, a Specific Character Set of a numeric VR,
# an IS or DS past a float's range ('1e999': OverflowError, an ArithmeticError).
UNREADABLE = (RuntimeError, BytesLengthException, struct.error, TypeError, LookupError,
              ArithmeticError)


def read_tags(path: Path, keywords: Iterable[str]) -> dict[str, str]:
    """Values of `keywords` present in the file, as strings (multi-values joined with '\\').
    A dataset pydicom cannot read raises ValueError (or InvalidDicomError, OSError)."""
    wanted = list(keywords)
    try:
        # pydicom converts values when they are read (ds.get), so both steps are guarded.
        return _values(dcmread(path, stop_before_pixels=True, specific_tags=wanted), wanted)
    except RecursionError as exc:  # pydicom reads nested sequences recursively
        raise ValueError("sequences nested too deeply") from exc
    except UNREADABLE as exc:
        raise ValueError(str(exc) or type(exc).__name__) from exc


def _values(ds: Dataset, wanted: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for keyword in wanted:
        try:
            value = ds.get(keyword)  # converted here: IS and DS to numbers
        except (ValueError, *UNREADABLE) as exc:  # named, for the sender's ErrorComment
            raise ValueError(f"{keyword}: {exc or type(exc).__name__}") from exc
        if value is None:
            continue
        if isinstance(value, MultiValue):
            out[keyword] = "\\".join(str(v) for v in value)
        else:
            out[keyword] = str(value)
    return out
