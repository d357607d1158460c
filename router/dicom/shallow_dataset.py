"""A relayed dataset as pydicom's, built from its bytes without parsing what it nests (the
worker's side of dataset_bytes.py)."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from router.dicom.dataset_bytes import SPECIFIC_CHARACTER_SET, DatasetBytes, Unreadable

__all__ = ["Unreadable", "shallow_dataset"]


def _elements(reader: DatasetBytes) -> Iterator[RawDataElement]:
    """The top-level elements, their values as bytes."""
    while reader.pos < len(reader.data):
        tag, vr, length = reader.header()
        if tag >> 16 == 0xFFFE:
            raise Unreadable(f"an item or delimiter at the top level, byte {reader.pos - 8}")
        start = reader.pos
        end = reader.skip(length)
        yield RawDataElement(BaseTag(tag), vr, length, reader.data[start:end], start,
                             reader.implicit, True)


def shallow_dataset(data: bytes, implicit: bool) -> Dataset:
    """The dataset as pydicom reads it (its elements decoded when used), but with no value of
    undefined length parsed: written again, each is its bytes as received. Unreadable when
    the bytes are not a dataset."""
    elements: dict[BaseTag, DataElement | RawDataElement] = {
        element.tag: element for element in _elements(DatasetBytes(data, implicit))}
    dataset = Dataset(elements)
    encoding: str | list[str] = "iso8859"
    if SPECIFIC_CHARACTER_SET in elements:
        charset = dataset[SPECIFIC_CHARACTER_SET].value
        encoding = convert_encodings(charset)
    dataset.set_original_encoding(implicit, True, encoding)
    return dataset
