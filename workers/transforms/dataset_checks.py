"""What a dataset must be before a transform rewrites it (morph, de-identify, transcode).

A transform reads the whole dataset with pydicom and writes it again. On hostile or broken
input pydicom raises more than ValueError (router/core/header_tags.UNREADABLE), and its
writer recurses once per sequence level, carrying the previous levels' messages in each
RecursionError: a 400-level nesting of 8 KB took a codec process to 6.8 GB. Such an
instance is refused here, as a permanent failure of its step (a dead letter naming why),
before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from router.core.header_tags import UNREADABLE
from workers.transforms.charset_check import TEXT_VRS

# Deeper than any real structured report or nested sequence a modality writes (an SR
# content tree rarely passes 10-20); well inside pydicom's recursive writer.
MAX_SEQUENCE_NESTING = 64
# Values that are strings (PS3.5 6.2). Of the C0 control characters a string holds only TAB,
# LF, FF, CR (ST, LT, UT) and ESC (ISO 2022); NUL or a space pads it. Bytes under 0x20 are no
# part of a multi-byte character in any character set DICOM names.
STRING_VRS = TEXT_VRS | {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})  # a backslash in them is text


class UnfitDataset(ValueError):
    """This instance cannot be rewritten as it is; the message says why (no values)."""


def check_nesting(ds: Dataset, limit: int = MAX_SEQUENCE_NESTING) -> None:
    """Raise UnfitDataset when sequences nest more than `limit` levels (walked with a stack,
    not recursion). Text is left as read: pydicom decodes a value that is not valid in its
    character set (a Latin-1 byte in an ISO_IR 192 dataset) with U+FFFD and writes that
    back, so a morph of one attribute changed the bytes of another at the destination."""
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        for tag in list(current.keys()):
            if element_vr(current.get_item(tag)) in TEXT_VRS:
                continue
            elem = current[tag]
            if elem.VR != "SQ" or not elem.value:
                continue
            if depth + 1 > limit:
                raise UnfitDataset(f"sequences are nested more than {limit} levels deep")
            stack.extend((item, depth + 1) for item in elem.value)


def check_string(elem: DataElement | RawDataElement, name: str) -> None:
    """Raise UnfitDataset when a string value holds a control character no string holds (a
    NUL before its padding): an element whose length runs over the elements after it reads
    as one value with their headers inside, and a kept Modality carried the patient's name
    and ID to a de-identified destination."""
    if element_vr(elem) not in STRING_VRS:
        return
    value = elem.value
    if isinstance(value, bytes):
        text = value.decode("latin-1")  # only the bytes under 0x20 matter
        # Each value padded as pydicom reads it (and a decoded element is checked): a NUL
        # after every value of a multi-valued one ('VE11\0\\SP1\0') is padding too.
        values = [text] if element_vr(elem) in _SINGLE_VALUED else text.split("\\")
    elif isinstance(value, MultiValue | list):
        values = [str(v) for v in value]
    else:
        values = [] if value is None else [str(value)]
    if any(_NOT_TEXT.search(v.rstrip("\x00 ")) for v in values):
        raise UnfitDataset(f"{name} holds control characters no text holds: an element's "
                           "length runs over the elements after it (a malformed dataset)")


def element_vr(elem: DataElement | RawDataElement) -> str | None:
    """The VR of an element, read or not (an Implicit VR one has none until it is)."""
    if elem.VR:
        return elem.VR
    try:
        return dictionary_VR(elem.tag)
    except KeyError:
        return None


def decode_text(ds: Dataset) -> None:
    """Decode every text value with the character set the dataset has now, before a morph
    changes it: pydicom writes an element it never decoded as the bytes it read, which the
    new character set would misread."""
    for _ in ds.iterall():
        pass


def check_identity(ds: Dataset) -> None:
    """Raise UnfitDataset unless the dataset carries the SOP Instance UID its file meta (the
    C-STORE it came with) names. Without it the dataset was not read as what it is (a Big
    Endian dataset under a Little Endian header reads as one unknown element holding
    everything), and nothing read from it can be trusted to be de-identified."""
    actual = str(ds.get("SOPInstanceUID", "") or "").strip()
    meta = getattr(ds, "file_meta", None)
    expected = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip() if meta else ""
    if not actual:
        raise UnfitDataset("the dataset has no SOP Instance UID that can be read (is it "
                           "encoded as its transfer syntax says?)")
    if expected and actual != expected:
        raise UnfitDataset("the dataset's SOP Instance UID is not the one it was sent with")


@contextmanager
def readable() -> Iterator[None]:
    """pydicom's failures on a hostile dataset, as UnfitDataset."""
    try:
        yield
    except UnfitDataset:
        raise
    except RecursionError as exc:
        raise UnfitDataset("sequences are nested too deeply to be read") from exc
    except UNREADABLE as exc:
        raise UnfitDataset(f"{type(exc).__name__}: {exc}"[:300]) from exc
