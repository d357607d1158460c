"""Changing a dataset's byte order (Explicit VR Big Endian <-> little endian), which pydicom
does not do: OW/OL/OF/OD/OV values and native Pixel Data are swapped word by word."""

from __future__ import annotations

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from workers.transforms.transcode_error import TranscodeError

# VRs whose values pydicom keeps as raw bytes, by the width of the words to byte-swap.
_SWAP_WIDTHS = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
_PIXEL_DATA = 0x7FE00010
_PIXEL_SWAP_BITS = (16, 32, 64)  # Bits Allocated of pixels that are words to swap


def set_byte_order(ds: FileDataset, *, little_endian: bool) -> None:
    """Byte-swap OW/OL/OF/OD/OV values, and native Pixel Data by its Bits Allocated, if the
    byte order changes (pydicom does not).

    UN values cannot be swapped without knowing their structure and are left as they are.
    """
    current = ds.file_meta.TransferSyntaxUID != ExplicitVRBigEndian
    if current == little_endian:
        return
    correct_ambiguous_vr(ds, current)  # resolve 'OB or OW' etc. while values are still right
    _swap_words(ds)
    # Native now, in the new byte order: encoders read the syntax to interpret the pixels.
    ds.file_meta.TransferSyntaxUID = (
        ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    )


def _swap_words(ds: Dataset) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_words(item)
            continue
        width = _swap_width(ds, elem)
        if not width or not elem.value:
            continue
        if len(elem.value) % width:
            raise TranscodeError(f"cannot change byte order: {elem.tag} ({elem.VR}) has "
                                 f"{len(elem.value)} bytes, not a multiple of {width}")
        elem.value = np.frombuffer(elem.value, dtype=f"u{width}").byteswap().tobytes()
        if elem.tag == _PIXEL_DATA and width > 1:
            elem.VR = "OW"  # PS3.5 A.3: the only VR that says its words are swapped


def _swap_width(ds: Dataset, elem: DataElement) -> int:
    """The width of the words to byte-swap in ``elem``, 0 for none.

    Native Pixel Data is swapped by its Bits Allocated, whatever its VR: 16-bit pixels
    labelled OB (invalid, PS3.5 A.3, but sent) are words in the syntax's byte order all the
    same, as pydicom reads them; skipping them changed every value (1792 became 7).
    """
    if elem.tag == _PIXEL_DATA and elem.VR in ("OB", "OW"):
        bits = ds.get("BitsAllocated")
        if isinstance(bits, int) and bits in _PIXEL_SWAP_BITS:
            return bits // 8
    return _SWAP_WIDTHS.get(elem.VR, 0)
