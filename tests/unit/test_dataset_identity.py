"""router/dicom/dataset_identity.py: the SOP UIDs from a dataset's first bytes agree with
pydicom's reading, and anything the walk cannot settle is left to pydicom (None)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from router.dicom.dataset_identity import IDENTITY_HEAD, sop_uids
from tests.dicom_samples import write_instance

CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def dataset_bytes(ds: Dataset, syntax: str) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, syntax == IMPLICIT
    write_dataset(out, ds)
    return out.getvalue()


def head_of(path: Path) -> tuple[bytes, str]:
    """The dataset's first bytes of a Part 10 file, and its transfer syntax."""
    ds = pydicom.dcmread(path)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    raw = path.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    return raw[meta_end:meta_end + IDENTITY_HEAD], syntax


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, JPEG_BASELINE])
def test_a_written_instance_gives_the_uids_pydicom_reads(tmp_path: Path, syntax: str) -> None:
    path = write_instance(tmp_path, sop_class=CT, transfer_syntax=syntax,
                          sop_instance_uid="1.2.826.0.1.3680043.8.498.77")
    head, read_syntax = head_of(path)
    assert read_syntax == syntax
    assert sop_uids(head, syntax) == (CT, "1.2.826.0.1.3680043.8.498.77")


def test_what_the_walk_cannot_settle_is_left_to_pydicom(tmp_path: Path) -> None:
    path = write_instance(tmp_path, sop_class=CT, transfer_syntax=BIG_ENDIAN)
    head, _ = head_of(path)
    assert sop_uids(head, BIG_ENDIAN) is None  # not Little Endian
    ds = Dataset()
    ds.ReferencedImageEvidenceSequence = Sequence([Dataset()])  # (0008,9092): after them
    ds.SOPClassUID, ds.SOPInstanceUID = CT, "1.2.3"
    assert sop_uids(dataset_bytes(ds, EXPLICIT), EXPLICIT) == (CT, "1.2.3")
    lacking = Dataset()
    lacking.SOPClassUID = CT
    lacking.PatientName = "X"
    assert sop_uids(dataset_bytes(lacking, EXPLICIT), EXPLICIT) is None  # pydicom says ''
    whole = dataset_bytes(ds, IMPLICIT)
    assert sop_uids(whole, IMPLICIT) == (CT, "1.2.3")
    assert sop_uids(whole[:whole.index(b"1.2.3") + 3], IMPLICIT) is None  # cut inside it
    assert sop_uids(b"", EXPLICIT) is None


def test_an_undefined_length_sequence_before_them_is_left_to_pydicom() -> None:
    # (0008,0006) Language Code Sequence, undefined length, empty: SQ, reserved, FFFFFFFF,
    # then its Sequence Delimitation Item.
    raw = (b"\x08\x00\x06\x00SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
           + b"\x08\x00\x16\x00UI\x1a\x00" + CT.encode() + b"\x00"
           + b"\x08\x00\x18\x00UI\x06\x001.2.3\x00")
    assert sop_uids(raw, EXPLICIT) is None


uid = st.from_regex(r"[1-9][0-9]{0,8}(\.[1-9][0-9]{0,8}){1,6}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(sop_class=uid, sop_instance=uid, syntax=st.sampled_from([IMPLICIT, EXPLICIT]),
       description=st.text(alphabet="ABCDEFGH ", max_size=70),
       cut=st.integers(min_value=0, max_value=400))
def test_the_walk_agrees_with_pydicom_or_defers(sop_class: str, sop_instance: str,
                                               syntax: str, description: str,
                                               cut: int) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = "20261207"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
    ds.StudyDescription = description
    raw = dataset_bytes(ds, syntax)
    head = raw[:cut] if cut < len(raw) else raw
    found = sop_uids(head, syntax)
    if found is not None:  # never a wrong answer: pydicom's reading of the whole
        assert found == (sop_class, sop_instance)
    if cut >= len(raw):
        assert found == (sop_class, sop_instance)
