"""Hostile or misread datasets in the worker's rewriting steps (morph, de-identification):
each is refused as a permanent failure of its step, a dead letter naming why, and never
sent on half-transformed. Found by a bug hunt with crafted files (2026-12-07)."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from router.core.config import parse_config
from router.core.deid_spec import DeidentifyConfig
from router.core.errors import DeliveryError
from router.core.spool import Spool
from workers.prepare import Preparer
from workers.transforms.dataset_checks import UnfitDataset, readable
from workers.transforms.deidentify import deidentify_file
from workers.transforms.morph import morph_file
from workers.transforms.uid_map import UidMap

from .helpers import make_header

PHI = ("DOE^JOHN", "MRN-4711", "ACC-0815")


@pytest.fixture
def uids(tmp_path: Path) -> Iterator[UidMap]:
    uid_map = UidMap(tmp_path / "key", tmp_path / "uids.sqlite")
    yield uid_map
    uid_map.close()


def _dataset(sop: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = PHI
    ds.Modality = "CT"
    return ds


def _file(path: Path, sop: str, body: bytes) -> Path:
    """A Part 10 file whose meta says Explicit VR Little Endian, with `body` as its dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta)
    path.write_bytes(fp.getvalue() + body)
    return path


def _encoded(ds: Dataset, *, little_endian: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little_endian, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _nested(levels: int) -> bytes:
    """ContentSequence in ContentSequence, `levels` deep, undefined lengths (8 KB at 400)."""
    sq = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + b"\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    ends = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
    return (sq + item) * levels + ends * levels


def test_a_big_endian_dataset_under_a_little_endian_header_is_not_sent_identified(
        tmp_path: Path, uids: UidMap) -> None:
    """It reads as one unknown element holding the whole dataset, which the table does not
    name: it was kept, and the PACS got name, ID and accession number."""
    sop = generate_uid()
    source = _file(tmp_path / "be.dcm", sop, _encoded(_dataset(sop), little_endian=False))
    target = tmp_path / "out.dcm"
    with pytest.raises(UnfitDataset, match="no SOP Instance UID"):
        deidentify_file(source, target, DeidentifyConfig(), uids)
    assert not target.exists()


def test_a_dataset_without_its_sop_instance_uid_is_not_sent_under_the_original(
        tmp_path: Path, uids: UidMap) -> None:
    sop = generate_uid()
    ds = _dataset(sop)
    del ds.SOPInstanceUID
    source = _file(tmp_path / "nouid.dcm", sop, _encoded(ds))
    with pytest.raises(UnfitDataset, match="no SOP Instance UID"):
        deidentify_file(source, tmp_path / "out.dcm", DeidentifyConfig(), uids)


def test_a_dataset_that_is_not_the_instance_it_was_sent_as_is_refused(
        tmp_path: Path, uids: UidMap) -> None:
    sop = generate_uid()
    source = _file(tmp_path / "other.dcm", sop, _encoded(_dataset(generate_uid())))
    with pytest.raises(UnfitDataset, match="not the one it was sent with"):
        deidentify_file(source, tmp_path / "out.dcm", DeidentifyConfig(), uids)


def test_an_element_no_dictionary_knows_is_removed(tmp_path: Path, uids: UidMap) -> None:
    sop = generate_uid()
    ds = _dataset(sop)
    ds.add_new(0x08000500, "LO", "DOE^JOHN AGAIN")  # an even group, no public attribute
    source = _file(tmp_path / "unknown.dcm", sop, _encoded(ds))
    changed = deidentify_file(source, tmp_path / "out.dcm", DeidentifyConfig(), uids)
    out = dcmread(tmp_path / "out.dcm")
    assert 0x08000500 not in out and "(0800,0500)" in changed
    assert not any(value.encode() in (tmp_path / "out.dcm").read_bytes() for value in PHI)


def _run_over(ds: Dataset, first: bytes, after: bytes) -> bytes:
    """`ds` encoded with the length of the element whose header starts with `first` (tag and
    VR, explicit VR) run over the elements after it, up to the one starting with `after`."""
    body = bytearray(_encoded(ds))
    start, end = body.index(first), body.index(after)
    struct.pack_into("<H", body, start + 6, end - (start + 8))
    return bytes(body)


@pytest.mark.parametrize(("keyword", "header"), [
    ("Modality", b"\x08\x00\x60\x00CS"),      # decoded by pydicom, then kept
    ("Manufacturer", b"\x08\x00\x70\x00LO"),  # text kept as read, never decoded
])
def test_a_kept_element_whose_length_runs_over_the_patients_name_is_refused(
        tmp_path: Path, uids: UidMap, keyword: str, header: bytes) -> None:
    """Its value then holds the next elements, headers and all: the kept Modality went to
    the research PACS as 'CT..PN..DOE^JOHN..LO..MRN-4711' beside PatientIdentityRemoved YES."""
    sop = generate_uid()
    ds = _dataset(sop)
    ds.Manufacturer = "ACME"
    # Up to StudyInstanceUID (0020,000D): PatientName and PatientID are inside.
    source = _file(tmp_path / "over.dcm", sop, _run_over(ds, header, b"\x20\x00\x0d\x00UI"))
    assert str(dcmread(source).get(keyword)).find("DOE^JOHN") > 0  # read as one value
    target = tmp_path / "out.dcm"
    with pytest.raises(UnfitDataset, match=f"{keyword} holds control characters"):
        deidentify_file(source, target, DeidentifyConfig(), uids)
    assert not target.exists()


def test_text_padded_with_nul_or_holding_line_breaks_and_escapes_is_still_sent(
        tmp_path: Path, uids: UidMap) -> None:
    sop = generate_uid()
    ds = _dataset(sop)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.Manufacturer = "ACME\0"  # padded with NUL, as some modalities do
    ds.add_new(0x00181030, "LO", "Head\x1b$B\x21\x22\x1b(B")  # ProtocolName, ISO 2022 escapes
    ds.add_new(0x00204000, "LT", "line 1\r\nline 2\tend")  # ImageComments (cleaned below)
    source = _file(tmp_path / "ok.dcm", sop, _encoded(ds))
    deidentify_file(source, tmp_path / "out.dcm", DeidentifyConfig(clean_descriptions=True), uids)
    out = dcmread(tmp_path / "out.dcm")
    assert out.Manufacturer == "ACME" and out.ImageComments == "line 1\r\nline 2\tend"


def test_kept_text_whose_values_are_each_padded_with_nul_is_still_sent(
        tmp_path: Path, uids: UidMap) -> None:
    """Kept text is checked as read: a NUL padding each value of a multi-valued one (as a
    decoded ImageType's is accepted, and as pydicom reads it: 'VE11', 'SP1') is no control
    character; checked as one string, it was a dead letter."""
    sop = generate_uid()
    ds = _dataset(sop)
    ds.SoftwareVersions = ["VE11C", "SP1"]
    body = _encoded(ds).replace(b"LO\x0a\x00VE11C\\SP1 ", b"LO\x0a\x00VE11\x00\\SP1\x00")
    source = _file(tmp_path / "padded.dcm", sop, body)
    assert dcmread(source).SoftwareVersions == ["VE11", "SP1"]
    deidentify_file(source, tmp_path / "out.dcm", DeidentifyConfig(), uids)
    assert dcmread(tmp_path / "out.dcm").SoftwareVersions == ["VE11", "SP1"]


@pytest.mark.parametrize("levels", [100, 400])
@pytest.mark.parametrize("step", ["morph", "deidentify"])
def test_sequences_nested_hundreds_deep_are_a_dead_letter_of_the_step(
        tmp_path: Path, step: str, levels: int) -> None:
    """8 KB of nesting took a codec process to 6.8 GB in pydicom's writer; morph and
    de-identification raised RecursionError, retried as `internal` with a traceback."""
    sop = generate_uid()
    source = _file(tmp_path / "deep.dcm", sop, _encoded(_dataset(sop)) + _nested(levels))
    config = parse_config({
        "destinations": {"d": {"type": "folder", "path": str(tmp_path / "d")}},
        "rules": [{"name": "r", "forward": ["d"],
                   **({"morph": [{"action": "set", "tag": "StationName", "value": "X"}]}
                      if step == "morph" else {"deidentify": {}})}]})
    spool = Spool(tmp_path / "spool").create()
    preparer = Preparer(config, spool, lambda: UidMap(tmp_path / "k", tmp_path / "u.sqlite"))
    job = make_header("j1", ("d",), rules=("r",), sop_instance_uid=sop)
    with pytest.raises(DeliveryError) as failure:
        preparer.prepare(job, "d", source)
    assert failure.value.reason == step and not failure.value.transient
    assert "nested" in str(failure.value)  # past 64 levels, or past what pydicom can read
    assert list(spool.relay.iterdir()) == []  # no copy left behind


def test_what_pydicom_raises_on_hostile_input_is_a_reason_not_an_internal_error(
        tmp_path: Path) -> None:
    sop = generate_uid()
    body = _encoded(_dataset(sop)) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)  # stray delimiter
    source = _file(tmp_path / "stray.dcm", sop, body)
    with contextlib.suppress(UnfitDataset):  # a reason, or a file: never anything else
        morph_file(source, tmp_path / "out.dcm", [])
    for raised in (NotImplementedError("VR"), TypeError("bytes"), KeyError("x")):
        with pytest.raises(UnfitDataset), readable():
            raise raised


@pytest.mark.parametrize("levels", [100, 400])
def test_transcoding_refuses_deep_nesting_before_the_writer_meets_it(
        tmp_path: Path, levels: int) -> None:
    """400 levels in 8 KB drove a codec process to 6.8 GB: pydicom's writer re-raises its
    RecursionError at each level with the earlier levels' text inside."""
    from workers.transforms.transcode import TranscodeError, transcode_file

    sop = generate_uid()
    source = _file(tmp_path / "deep.dcm", sop, _encoded(_dataset(sop)) + _nested(levels))
    with pytest.raises(TranscodeError, match="nested"):
        transcode_file(source, tmp_path / "out.dcm", "1.2.840.10008.1.2")
    assert not (tmp_path / "out.dcm").exists()
