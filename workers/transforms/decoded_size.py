"""Whether a transcode fits the memory it is allowed, told from the header alone.

Transcoding holds the whole pixel data decoded, about three times its size at the peak
(transcode.py). A multi-GB instance would take more memory than the machine has, and the
kernel's OOM killer may then pick the acceptor or the broker rather than the codec process;
a retry would do it again. So the decoded size is estimated before anything is decoded. An
instance past the budget is transcoded one frame at a time (frame_transcode.py) when it has
several frames and one of them decodes to at most a quarter of the budget (a decoded frame,
its encoded copy and the codecs' working memory); otherwise it is refused: a `transcode`
dead letter, not retried (it would not fit the next time either).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class DecodedSize:
    """The decoded pixel data's size, whole and of one frame, in bytes."""

    total: int
    frame: int
    frames: int


def estimate_decoded(path: Path) -> DecodedSize | None:
    """The decoded size of the pixel data of the instance in `path` (0 without pixels), or
    None when its header cannot tell: the codec process then reads it and says why."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=_SIZE_TAGS)
        if "Rows" not in ds or "Columns" not in ds:
            return DecodedSize(0, 0, 0)
        size = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1),
                int(ds.get("BitsAllocated") or 8))
        frames = int(ds.get("NumberOfFrames") or 1)
        return DecodedSize(decoded_bytes(*size, frames), decoded_bytes(*size, 1), frames)
    except _READ_ERRORS:
        return None


def estimate_decoded_bytes(path: Path) -> int | None:
    """``estimate_decoded(path).total``, or None."""
    size = estimate_decoded(path)
    return None if size is None else size.total


def by_frame_refusal(size: DecodedSize, budget: int) -> str | None:
    """Why an instance past the budget cannot be transcoded one frame at a time, or None
    when it can (the module docstring)."""
    if size.frames < 2:
        return "frame-by-frame transcoding needs several frames and it has one"
    if size.frame > budget // 4:
        return (f"frame-by-frame transcoding needs one frame to decode to at most a quarter "
                f"of the budget, and one decodes to {_size(size.frame)}")
    return None


def over_budget(estimate: int | None, budget: int, syntax: str) -> str | None:
    """The dead letter's message when `estimate` exceeds `budget`, else None. `syntax` is the
    instance's transfer syntax UID, which the destination could take instead."""
    if estimate is None or estimate <= budget:
        return None
    return (f"not transcoded: its pixel data decodes to about {_size(estimate)} "
            f"(Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames), more "
            f"than transcode_max_decoded_bytes ({_size(budget)}); transcoding it whole needs "
            f"about three times that in memory. Raise transcode_max_decoded_bytes if the machine "
            f"has the memory, or let the destination take {_name(syntax)} (add it to its "
            f"transfer_syntaxes), then replay the dead letter")


def _name(syntax: str) -> str:
    name = UID(syntax).name
    return syntax if name == syntax else f"{name} {syntax}"


def _size(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.1f} GiB ({n} bytes)"
    return f"{n / 1024**2:.1f} MiB ({n} bytes)"
