"""router/dicom/dataset_file.py: where a spooled file's dataset starts, read like pydicom."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pynetdicom.dsutils import split_dataset

from router.dicom.dataset_file import DatasetFileError, read_dataset_file
from tests.dicom_samples import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE, write_instance

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE])
def test_the_file_meta_is_read_like_pydicom(tmp_path: Path, syntax: str) -> None:
    path = write_instance(tmp_path, sop_class=CT, transfer_syntax=syntax, size_bytes=2_000)
    with path.open("rb") as fh:
        meta = read_dataset_file(fh, path.stat().st_size)
        assert fh.tell() == meta.offset  # left at the dataset's start
    file_meta, offset = split_dataset(path)
    assert (meta.offset, meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax_uid) \
        == (offset, file_meta.MediaStorageSOPClassUID, file_meta.MediaStorageSOPInstanceUID,
            file_meta.TransferSyntaxUID)
    assert meta.dataset_length == path.stat().st_size - offset


def test_a_bare_dataset_starts_at_its_first_byte() -> None:
    data = b"\x08\x00\x16\x00" + bytes(200)
    meta = read_dataset_file(io.BytesIO(data), len(data))
    assert (meta.offset, meta.sop_class_uid, meta.dataset_length) == (0, "", len(data))


def test_a_truncated_file_meta_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = write_instance(tmp_path, sop_class=CT, transfer_syntax=EXPLICIT_VR_LE)
    head = path.read_bytes()[:150]  # cut inside the first meta element's value
    with pytest.raises(DatasetFileError):
        read_dataset_file(io.BytesIO(head), len(head))
