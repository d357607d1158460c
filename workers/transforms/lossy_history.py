"""An image's lossy history (PS3.3 C.7.6.1.1.5): Lossy Image Compression "01" once it was
ever lossy compressed, with each step's method and ratio appended, whether the router's
transcoding made the step (a lossy target) or undid its syntax (a lossy source decoded: the
syntax was its only record)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)

# Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1) of each lossy target the router writes
LOSSY_METHODS: dict[str, str] = {JPEG2000: "ISO_15444_1", JPEGLSNearLossless: "ISO_14495_1"}
# ... and of the lossy syntaxes pydicom decodes, recorded when the router decodes one (PS3.3
# C.7.6.1.1.5: an image ever lossy compressed is "01"; DCMTK's dcmdjpeg and dcmdjpls set it).
# JPEG 2000 (.91) and HTJ2K (.203) count as lossy by their syntax: their codestream's
# reversible 5-3 wavelet does not make them lossless (pydicom's 693_J2KI.dcm, 338:1, uses it;
# GDCM's gdcmconv --raw, which trusts it, drops that image's lossy history).
SOURCE_LOSSY_METHODS: dict[str, str] = {
    **LOSSY_METHODS,
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    HTJ2K: "ISO_15444_15",
}


def mark_lossy_source(ds: Dataset, ratio: float, method: str) -> None:
    """Record the lossy step the source's syntax says it went through (ratio: decoded size to
    encapsulated size), unless the dataset already says "01": the encoder that wrote the
    syntax recorded it then (dcmcjpeg does)."""
    if ds.get("LossyImageCompression") == "01":
        return
    if method:
        mark_lossy(ds, ratio, method)
    else:  # a lossy syntax whose method we do not know: the flag alone, as DCMTK writes
        ds.LossyImageCompression = "01"


def mark_lossy(ds: Dataset, ratio: float, method: str) -> None:
    """Record a lossy step, after any earlier ones (PS3.3 C.7.6.1.1.5)."""
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*_values(ds, "LossyImageCompressionRatio"),
                                     f"{ratio:.2f}"]
    ds.LossyImageCompressionMethod = [*_values(ds, "LossyImageCompressionMethod"), method]


def _values(ds: Dataset, keyword: str) -> list[Any]:
    if keyword not in ds or ds[keyword].VM == 0:
        return []
    value = ds[keyword].value
    return list(value) if ds[keyword].VM > 1 else [value]
