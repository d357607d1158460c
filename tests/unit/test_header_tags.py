"""router/core/header_tags.py: the header values rules and the audit trail read."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from router.core.header_tags import read_tags

CT = "1.2.840.10008.5.1.4.1.1.2"


def _part10(path: Path, dataset_bytes: bytes, syntax: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT, "1.2.3.4"
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes() + dataset_bytes)
    return path


def test_values_come_back_as_text(tmp_path: Path) -> None:
    ds = Dataset()
    ds.PatientID, ds.ImageType = "P1", ["ORIGINAL", "PRIMARY"]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CT, "1.2.3"
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    assert read_tags(tmp_path / "a.dcm", ["PatientID", "ImageType", "StudyInstanceUID"]) == {
        "PatientID": "P1", "ImageType": "ORIGINAL\\PRIMARY"}


def test_sequences_nested_past_pythons_recursion_are_unreadable_not_an_internal_error(
        tmp_path: Path) -> None:
    """A 96 KB dataset of 3,000 nested sequences raised RecursionError out of pydicom: the
    sender got 0x0110 'router internal error' and the log a traceback, where an unreadable
    dataset is 0xC000 (router/acceptor/store_handler.py catches ValueError)."""
    depth = 3000
    nested = (struct.pack("<HHI", 0x0008, 0x1115, 0xFFFFFFFF)
              + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)) * depth
    nested += (struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
               + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)) * depth
    path = _part10(tmp_path / "deep.dcm", nested, ImplicitVRLittleEndian)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_tags(path, ["PatientID", "StudyInstanceUID"])


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


@pytest.mark.parametrize(("dataset", "message"), [
    (_element(0x0008, 0x0060, b"ZZ", b"CT"), "Unknown Value Representation 'ZZ'"),
    (_element(0x0008, 0x0060, b"UL", b"CTX"), "even multiple of bytes per value"),
    (_element(0x0018, 0x0050, b"FD", b"abc"), "even multiple of bytes per value"),
    (_element(0x0008, 0x0005, b"US", b"\x01\x00"), "not subscriptable"),
    (struct.pack("<HH", 0x0008, 0x0060) + b"OB\x00\x00" + b"\x01\x00", "unpack requires"),
], ids=["unknown-vr", "ul-odd-length", "fd-odd-length", "charset-as-us", "truncated-header"])
def test_hostile_datasets_are_unreadable_not_an_internal_error(
        tmp_path: Path, dataset: bytes, message: str) -> None:
    """Regression: a Modality with VR "ZZ" raised NotImplementedError out of pydicom, and the
    sender got 0x0110 'router internal error' with a traceback in the log, where README
    promises 0xC000 for a dataset that cannot be parsed. The other cases were found by
    fuzzing: BytesLengthException, TypeError and struct.error escaped the same way."""
    path = _part10(tmp_path / "hostile.dcm", dataset, ExplicitVRLittleEndian)
    with pytest.raises(ValueError, match=message):
        read_tags(path, ["Modality", "SliceThickness", "PatientID"])


@pytest.mark.parametrize("keyword", ["InstanceNumber", "SeriesNumber"])
def test_a_number_past_a_floats_range_is_unreadable_naming_its_attribute(
        tmp_path: Path, keyword: str) -> None:
    """Regression: IS '1e999' raised OverflowError out of pydicom's conversion: the sender got
    0x0110 'router internal error' and the log a traceback, where it is 0xC000."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None
    element = _element(tag >> 16, tag & 0xFFFF, dictionary_VR(tag).encode(), b"1e999 ")
    path = _part10(tmp_path / "overflow.dcm", element, ExplicitVRLittleEndian)
    with pytest.raises(ValueError, match=f"^{keyword}: "):
        read_tags(path, [keyword, "PatientID"])
