"""Whether a transcode fits the memory it is allowed, told from the header alone.

Transcoding holds the whole pixel data decoded, about three times its size at the peak
(transcode.py). A multi-GB instance would take more memory than the machine has, and the
kernel's OOM killer may then pick the acceptor or the broker rather than the codec process;
a retry would do it again. So the decoded size is estimated before anything is decoded and an
instance past the budget is refused: a `transcode` dead letter, not retried (it would not fit
the next time either).
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from router.core.bounds import GIB
from router.core.header_tags import UNREADABLE

_SIZE_TAGS = ["Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames"]
_READ_ERRORS = (*UNREADABLE, InvalidDicomError, OSError, EOFError, ValueError, KeyError)


def decoded_bytes(rows: int, columns: int, samples: int, bits_allocated: int,
                  frames: int) -> int:
    """The size of the pixel data decoded: Rows x Columns x SamplesPerPixel x
    BitsAllocated/8 x NumberOfFrames (bit-packed 1-bit pixels rounded up to a byte)."""
    return (rows * columns * samples * bits_allocated * frames + 7) // 8


def estimate_decoded_bytes(path: Path) -> int | None:
    """The decoded size of the pixel data of the instance in `path` (0 without pixels), or
    None when its header cannot tell: the codec process then reads it and says why."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=_SIZE_TAGS)
        if "Rows" not in ds or "Columns" not in ds:
            return 0
        frames = ds.get("NumberOfFrames")
        return decoded_bytes(int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1),
                             int(ds.get("BitsAllocated") or 8), int(frames or 1))
    except _READ_ERRORS:
        return None


def over_budget(estimate: int | None, budget: int, syntax: str) -> str | None:
    """The dead letter's message when `estimate` exceeds `budget`, else None. `syntax` is the
    instance's transfer syntax UID, which the destination could take instead."""
    if estimate is None or estimate <= budget:
        return None
    return (f"not transcoded: its pixel data decodes to about {_size(estimate)} "
            f"(Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames), more "
            f"than transcode_max_decoded_bytes ({_size(budget)}); transcoding needs about "
            f"three times that in memory. Raise transcode_max_decoded_bytes if the machine "
            f"has the memory, or let the destination take {_name(syntax)} (add it to its "
            f"transfer_syntaxes), then replay the dead letter")


def _name(syntax: str) -> str:
    name = UID(syntax).name
    return syntax if name == syntax else f"{name} {syntax}"


def _size(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.1f} GiB ({n} bytes)"
    return f"{n / 1024**2:.1f} MiB ({n} bytes)"
