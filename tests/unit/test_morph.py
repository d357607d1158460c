"""router/core/morph_spec.py (the actions and their checks) and workers/transforms/morph.py
(applying them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from router.core.morph_spec import CopyAction, MorphAction, parse_tag_path
from workers.transforms.morph import MorphError, apply_morph, morph_file, needs_morph

ACTIONS = TypeAdapter(list[MorphAction])


def actions(*raw: dict[str, Any]) -> list[MorphAction]:
    return ACTIONS.validate_python(list(raw))


def morph(ds: Dataset, *raw: dict[str, Any]) -> list[str]:
    return apply_morph(ds, actions(*raw))


def problem(*raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        actions(*raw)
    return "\n".join(e["msg"] for e in info.value.errors())


def item(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def request(*accessions: str) -> Dataset:
    ds = item(AccessionNumber="A1", PatientName="Doe^John")
    ds.RequestAttributesSequence = Sequence([item(AccessionNumber=a) for a in accessions])
    return ds


# --- tags and paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["AccessionNumber", "(0008,0050)", "(0008, 0050)", "0008,0050",
                                 "00080050"])
def test_every_tag_form_names_the_same_element(tag: str) -> None:
    ds = item(AccessionNumber="A1")
    assert morph(ds, {"action": "prefix", "tag": tag, "value": "RAD-"}) == [
        "AccessionNumber: 'A1' -> 'RAD-A1'"]
    assert ds.AccessionNumber == "RAD-A1"


def test_paths_parse_into_items_and_a_tag() -> None:
    path = parse_tag_path("RequestAttributesSequence[*].(0008,0050)")
    assert path.items == ((0x00400275, None),) and path.tag == 0x00080050
    assert parse_tag_path("(0040,0275)[2].AccessionNumber").items == ((0x00400275, 2),)


def test_first_item_only() -> None:
    ds = request("R1", "R2")
    changes = morph(ds, {"action": "set", "tag": "RequestAttributesSequence[0].AccessionNumber",
                         "value": "X"})
    assert changes == ["RequestAttributesSequence[0].AccessionNumber: 'R1' -> 'X'"]
    assert [i.AccessionNumber for i in ds.RequestAttributesSequence] == ["X", "R2"]
    assert ds.AccessionNumber == "A1"


def test_every_item_with_hex_tags_in_the_path() -> None:
    ds = request("R1", "R2")
    changes = morph(ds, {"action": "suffix", "tag": "(0040,0275)[*].(0008,0050)", "value": "-B"})
    assert changes == ["RequestAttributesSequence[0].AccessionNumber: 'R1' -> 'R1-B'",
                       "RequestAttributesSequence[1].AccessionNumber: 'R2' -> 'R2-B'"]


def test_an_item_index_past_the_end_changes_nothing() -> None:
    ds = request("R1")
    assert morph(ds, {"action": "set", "tag": "RequestAttributesSequence[3].AccessionNumber",
                      "value": "X"}) == []
    assert len(ds.RequestAttributesSequence) == 1


def test_set_creates_a_missing_sequence_with_one_item() -> None:
    ds = item(AccessionNumber="A1")
    changes = morph(ds, {"action": "set", "tag": "RequestAttributesSequence[*].AccessionNumber",
                         "value": "A1"})
    assert changes == ["RequestAttributesSequence[0].AccessionNumber: added 'A1'"]
    assert ds.RequestAttributesSequence[0].AccessionNumber == "A1"


def test_other_actions_leave_a_missing_path_alone() -> None:
    ds = item(AccessionNumber="A1")
    assert morph(ds, {"action": "prefix", "tag": "RequestAttributesSequence[*].AccessionNumber",
                      "value": "X"},
                 {"action": "delete", "tag": "RequestAttributesSequence[0].AccessionNumber"},
                 {"action": "map", "tag": "InstitutionName", "table": {"A": "B"}}) == []
    assert "RequestAttributesSequence" not in ds


# --- the actions -------------------------------------------------------------------------------

def test_set_changes_and_creates_with_the_dictionary_vr() -> None:
    ds = item(PatientName="Doe^John")
    changes = morph(ds, {"action": "set", "tag": "PatientName", "value": "Anon^Pat"},
                    {"action": "set", "tag": "InstitutionName", "value": "General"},
                    {"action": "set", "tag": "SeriesNumber", "value": 7})
    assert changes == ["PatientName: 'Doe^John' -> 'Anon^Pat'",
                       "InstitutionName: added 'General'", "SeriesNumber: added '7'"]
    assert ds["InstitutionName"].VR == "LO" and ds.SeriesNumber == 7
    assert str(ds.PatientName) == "Anon^Pat"


def test_set_multi_valued_and_empty() -> None:
    ds = item(ImageType=["ORIGINAL", "PRIMARY"], StudyDescription="Chest")
    changes = morph(ds, {"action": "set", "tag": "ImageType", "value": ["DERIVED", "SECONDARY"]},
                    {"action": "set", "tag": "StudyDescription", "value": ""})
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.StudyDescription == "" and "StudyDescription" in ds
    assert changes[1] == "StudyDescription: 'Chest' -> ''"


def test_set_of_the_same_value_reports_nothing() -> None:
    assert morph(item(Modality="CT"), {"action": "set", "tag": "Modality", "value": "CT"}) == []


def test_a_private_element_needs_its_private_creator() -> None:
    """Set without a Private Creator, a private element reads back as UN (nobody can tell
    whose it is): the README's own example did that."""
    from workers.transforms.morph import MorphError

    with pytest.raises(MorphError, match=r"without its Private Creator \(0011,0010\)"):
        morph(Dataset(), {"action": "set", "tag": "(0011,1010)", "value": "site 4",
                          "vr": "LO"})


def test_set_private_tag_with_vr() -> None:
    ds = Dataset()
    changes = morph(ds, {"action": "set", "tag": "(0011,0010)", "value": "ACME"},
                    {"action": "set", "tag": "(0011,1010)", "value": "site 4", "vr": "LO"})
    assert changes == ["(0011,0010): added 'ACME'", "(0011,1010): added 'site 4'"]
    assert ds[0x00111010].VR == "LO" and ds[0x00111010].value == "site 4"


@pytest.mark.parametrize(("before", "after"), [(None, "UNKNOWN"), ("", "UNKNOWN"),
                                               ("HEAD", "HEAD")])
def test_set_if_empty(before: str | None, after: str) -> None:
    ds = Dataset() if before is None else item(BodyPartExamined=before)
    changes = morph(ds, {"action": "set_if_empty", "tag": "BodyPartExamined", "value": "UNKNOWN"})
    assert ds.BodyPartExamined == after
    assert bool(changes) == (before != "HEAD")


def test_delete_at_top_level_in_items_and_binary() -> None:
    ds = request("R1", "R2")
    ds.add(DataElement(0x00111010, "UN", b"\x01\x02\x03\x04"))
    changes = morph(ds, {"action": "delete", "tag": "PatientName"},
                    {"action": "delete", "tag": "RequestAttributesSequence[*].AccessionNumber"},
                    {"action": "delete", "tag": "(0011,1010)"},
                    {"action": "delete", "tag": "OtherPatientIDs"})
    assert changes == ["PatientName: deleted (was 'Doe^John')",
                       "RequestAttributesSequence[0].AccessionNumber: deleted (was 'R1')",
                       "RequestAttributesSequence[1].AccessionNumber: deleted (was 'R2')",
                       "(0011,1010): deleted (was 4 bytes of VR UN)"]
    assert "PatientName" not in ds and 0x00111010 not in ds
    assert all("AccessionNumber" not in i for i in ds.RequestAttributesSequence)


def test_copy_first_match_to_every_target() -> None:
    ds = request("R1", "R2")
    del ds.AccessionNumber
    changes = morph(ds, {"action": "copy", "from": "RequestAttributesSequence[*].AccessionNumber",
                         "to": "AccessionNumber"},
                    {"action": "copy", "from": "PatientID", "to": "OtherPatientIDs"})
    assert changes == ["AccessionNumber: added 'R1' (copied from "
                       "RequestAttributesSequence[0].AccessionNumber)"]
    assert ds.AccessionNumber == "R1"


def test_copy_takes_from_by_name_too() -> None:
    action = CopyAction(action="copy", from_="PatientID", to="OtherPatientIDs")
    ds = item(PatientID="P1")
    assert apply_morph(ds, [action]) == ["OtherPatientIDs: added 'P1' (copied from PatientID)"]


def test_replace_with_groups() -> None:
    ds = item(AccessionNumber="2024-00123")
    changes = morph(ds, {"action": "replace", "tag": "AccessionNumber",
                         "pattern": r"^(\d{4})-0*(\d+)$", "replacement": r"\2/\1"})
    assert changes == ["AccessionNumber: '2024-00123' -> '123/2024'"]


def test_replace_applies_to_each_value() -> None:
    ds = item(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    changes = morph(ds, {"action": "replace", "tag": "ImageType", "pattern": "^ORIGINAL$",
                         "replacement": "DERIVED"})
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "AXIAL"]
    assert changes == ["ImageType: ['ORIGINAL', 'PRIMARY', 'AXIAL'] -> "
                       "['DERIVED', 'PRIMARY', 'AXIAL']"]


def test_prefix_and_suffix_accession_number() -> None:
    ds = item(AccessionNumber="A1", OtherPatientIDs=["P1", "P2"])
    changes = morph(ds, {"action": "prefix", "tag": "AccessionNumber", "value": "RAD-"},
                    {"action": "suffix", "tag": "AccessionNumber", "value": "-X"},
                    {"action": "prefix", "tag": "OtherPatientIDs", "value": "S:"})
    assert ds.AccessionNumber == "RAD-A1-X"
    assert list(ds.OtherPatientIDs) == ["S:P1", "S:P2"]
    assert changes[:2] == ["AccessionNumber: 'A1' -> 'RAD-A1'",
                           "AccessionNumber: 'RAD-A1' -> 'RAD-A1-X'"]


def test_prefix_leaves_an_empty_value_empty() -> None:
    ds = item(AccessionNumber="")
    assert morph(ds, {"action": "prefix", "tag": "AccessionNumber", "value": "RAD-"}) == []
    assert ds.AccessionNumber == ""


def test_map_without_default_keeps_unlisted_values() -> None:
    table = {"St Elsewhere": "Elsewhere Hospital"}
    ds, other = item(InstitutionName="St Elsewhere"), item(InstitutionName="Mercy")
    assert morph(ds, {"action": "map", "tag": "InstitutionName", "table": table}) == [
        "InstitutionName: 'St Elsewhere' -> 'Elsewhere Hospital'"]
    assert morph(other, {"action": "map", "tag": "InstitutionName", "table": table}) == []
    assert other.InstitutionName == "Mercy"


def test_map_with_default_and_multiple_values() -> None:
    ds = item(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    morph(ds, {"action": "map", "tag": "ImageType", "table": {"ORIGINAL": "DERIVED"},
               "default": "OTHER"})
    assert list(ds.ImageType) == ["DERIVED", "OTHER", "OTHER"]


def test_numbers_are_changed_through_their_text() -> None:
    ds = item(SeriesNumber="12", SliceThickness="1.5", Rows=512)
    morph(ds, {"action": "prefix", "tag": "SeriesNumber", "value": "9"},
          {"action": "suffix", "tag": "SliceThickness", "value": "0"},
          {"action": "map", "tag": "Rows", "table": {"512": "256"}})
    assert (ds.SeriesNumber, str(ds.SliceThickness), ds.Rows) == (912, "1.50", 256)
    assert ds["Rows"].VR == "US" and isinstance(ds.Rows, int)


def test_a_value_that_is_no_number_is_a_morph_error() -> None:
    # The value came from the dataset (a patient's, maybe): the error does not quote it.
    with pytest.raises(MorphError, match=r"Rows has VR US: its new value \(from the "
                                         r"dataset, not logged\) is not a number"):
        morph(item(Rows=512), {"action": "replace", "tag": "Rows", "pattern": "5",
                               "replacement": "x"})


def test_binary_values_can_only_be_deleted() -> None:
    ds = Dataset()
    ds.add(DataElement(0x00111010, "UN", b"abcd"))
    with pytest.raises(MorphError, match=r"\(0011,1010\) has VR UN: it can only be deleted"):
        morph(ds, {"action": "replace", "tag": "(0011,1010)", "pattern": "a", "replacement": "b"})
    with pytest.raises(MorphError, match=r"\(0011,1010\) has VR UN"):
        morph(ds, {"action": "set", "tag": "(0011,1010)", "value": "x", "vr": "LO"})
    assert ds[0x00111010].value == b"abcd"


def test_a_value_too_long_for_its_vr_is_noted() -> None:
    ds = item(AccessionNumber="ABCDEFGHIJKLMN")
    (change,) = morph(ds, {"action": "prefix", "tag": "AccessionNumber", "value": "RAD-"})
    assert change.startswith("AccessionNumber: 'ABCDEFGHIJKLMN' -> 'RAD-ABCDEFGHIJKLMN' (warning:")
    assert "16" in change


def test_needs_morph() -> None:
    assert not needs_morph([])
    assert needs_morph(actions({"action": "delete", "tag": "PatientName"}))


def test_actions_from_yaml() -> None:
    raw = yaml.safe_load("""
        - {action: set, tag: SeriesNumber, value: 3}
        - {action: copy, from: PatientID, to: OtherPatientIDs}
        - {action: map, tag: InstitutionName, table: {2024: new}, default: old}
    """)
    ds = item(PatientID="P1", InstitutionName="2024")
    assert len(apply_morph(ds, ACTIONS.validate_python(raw))) == 3
    assert (ds.SeriesNumber, ds.OtherPatientIDs, ds.InstitutionName) == (3, "P1", "new")


# --- checks at load time -----------------------------------------------------------------------

def test_unknown_keyword_is_named_with_a_suggestion() -> None:
    message = problem({"action": "set", "tag": "PatientNmae", "value": "x"})
    assert "tag 'PatientNmae' is not a DICOM keyword or (gggg,eeee) tag" in message
    assert "did you mean PatientName?" in message


def test_unknown_keyword_inside_a_path() -> None:
    message = problem({"action": "delete", "tag": "RequestAttributesSequence[0].Accesion"})
    assert "'Accesion' is not a DICOM keyword or (gggg,eeee) tag" in message


@pytest.mark.parametrize(("tag", "expected"), [
    ("RequestAttributesSequence.AccessionNumber", "needs an item index, [0]"),
    ("PatientName[0].AccessionNumber", "PatientName is not a sequence (VR PN)"),
    ("RequestAttributesSequence[0]", "ends with an item index"),
    ("(0010,00GG)", "is not a DICOM keyword"),
    ("", "is not a DICOM keyword"),
])
def test_bad_paths(tag: str, expected: str) -> None:
    assert expected in problem({"action": "delete", "tag": tag})


def test_bad_regex() -> None:
    message = problem({"action": "replace", "tag": "AccessionNumber", "pattern": "(",
                       "replacement": ""})
    assert "bad regular expression '('" in message


def test_replacement_naming_a_missing_group() -> None:
    message = problem({"action": "replace", "tag": "AccessionNumber", "pattern": "(a)",
                       "replacement": r"\2"})
    assert "invalid group reference 2" in message


def test_private_tag_set_needs_vr() -> None:
    message = problem({"action": "set", "tag": "(0011,1010)", "value": "x"})
    assert "tag '(0011,1010)' is private or not in the DICOM dictionary: give its vr" in message


@pytest.mark.parametrize(("raw", "expected"), [
    ({"action": "set", "tag": "PixelData", "value": "x"}, "VR OB or OW: it can only be deleted"),
    ({"action": "replace", "tag": "PixelData", "pattern": "a", "replacement": "b"},
     "it can only be deleted"),
    ({"action": "set", "tag": "Rows", "value": "many"}, "'many' is not a number"),
    ({"action": "set", "tag": "PatientName", "value": "x", "vr": "LO"}, "has VR PN"),
    ({"action": "set", "tag": "(0011,1010)", "value": "x", "vr": "XX"}, "'XX' is not a DICOM VR"),
    ({"action": "set", "tag": "RequestAttributesSequence", "value": "x"}, "VR SQ"),
])
def test_values_and_vrs_are_checked(raw: dict[str, Any], expected: str) -> None:
    assert expected in problem(raw)


def test_unknown_action_and_keys() -> None:
    assert "'set', 'set_if_empty'" in problem({"action": "rename", "tag": "PatientName"})
    assert "Extra inputs" in problem({"action": "delete", "tag": "PatientName", "value": "x"})


# --- files -------------------------------------------------------------------------------------

def _write(path: Path, ds: Dataset, syntax: str, sop_class: str) -> Path:
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _image(**values: Any) -> Dataset:
    return item(PatientName="Doe^John", PatientID="P1", AccessionNumber="A1", Modality="CT",
                StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), Rows=2,
                Columns=2, BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0,
                SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", **values)


@pytest.fixture
def native_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "native.dcm", _image(PixelData=bytes(range(4))),
                  ExplicitVRLittleEndian, CTImageStorage)


@pytest.fixture
def compressed_file(tmp_path: Path) -> Path:
    frames = [b"\xff\xd8fake-frame-1\xff\xd9", b"\xff\xd8fake-frame-2!\xff\xd9"]
    ds = _image(NumberOfFrames=2, PixelData=encapsulate(frames))
    ds["PixelData"].VR = "OB"
    return _write(tmp_path / "compressed.dcm", ds, JPEGBaseline8Bit,
                  SecondaryCaptureImageStorage)


def test_morph_file_explicit_vr(native_file: Path, tmp_path: Path) -> None:
    source_bytes = native_file.read_bytes()
    target = tmp_path / "out.dcm"
    changes = morph_file(native_file, target, actions(
        {"action": "prefix", "tag": "AccessionNumber", "value": "RAD-"},
        {"action": "delete", "tag": "PatientName"}))
    assert changes == ["AccessionNumber: 'A1' -> 'RAD-A1'",
                       "PatientName: deleted (was 'Doe^John')"]
    assert native_file.read_bytes() == source_bytes
    out = dcmread(target)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.AccessionNumber == "RAD-A1" and "PatientName" not in out
    assert out.PixelData == bytes(range(4))
    assert out.SOPInstanceUID == dcmread(native_file).SOPInstanceUID


def test_morph_file_keeps_encapsulated_pixel_data(compressed_file: Path, tmp_path: Path) -> None:
    source_bytes = compressed_file.read_bytes()
    before = dcmread(compressed_file)
    target = tmp_path / "out.dcm"
    morph_file(compressed_file, target, actions(
        {"action": "set", "tag": "InstitutionName", "value": "Elsewhere"}))
    assert compressed_file.read_bytes() == source_bytes
    out = dcmread(target)
    assert out.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert out["PixelData"].is_undefined_length
    assert out.PixelData == before.PixelData
    assert out.InstitutionName == "Elsewhere"


def test_morph_file_updates_the_file_meta_instance_uid(native_file: Path, tmp_path: Path) -> None:
    uid = generate_uid()
    morph_file(native_file, tmp_path / "out.dcm",
               actions({"action": "set", "tag": "SOPInstanceUID", "value": uid}))
    out = dcmread(tmp_path / "out.dcm")
    assert out.SOPInstanceUID == uid == out.file_meta.MediaStorageSOPInstanceUID


def test_morph_file_refuses_to_overwrite_its_source(native_file: Path) -> None:
    source_bytes = native_file.read_bytes()
    with pytest.raises(ValueError, match="overwrite its source"):
        morph_file(native_file, native_file, [])
    assert native_file.read_bytes() == source_bytes


def test_a_failed_morph_writes_no_target(native_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.dcm"
    with pytest.raises(MorphError):
        morph_file(native_file, target, actions(
            {"action": "replace", "tag": "Rows", "pattern": "2", "replacement": "x"}))
    assert not target.exists()


# --- character sets ----------------------------------------------------------------------------

def _charset(charset: str | list[str] | None, **values: Any) -> Dataset:
    ds = item(**values)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    return ds


@pytest.mark.parametrize(("charset", "value"), [
    ("ISO_IR 100", "Šternberk Klinik"),        # not in Latin-1
    ("ISO_IR 144", "Müller^Jürgen"),           # not in Cyrillic
    (["", "ISO 2022 IR 87"], "Müller^Jürgen"),  # neither ASCII nor JIS X 0208
    (None, "Müller^Jürgen"),                   # the default repertoire is ASCII
])
def test_a_value_the_datasets_character_set_cannot_encode_is_refused(
        charset: str | list[str] | None, value: str) -> None:
    """Regression: pydicom wrote each such character as '?' and the destination got
    "?ternberk Klinik" with Success; the morph now refuses (a morph dead letter)."""
    ds = _charset(charset, PatientName="Doe^John")
    with pytest.raises(MorphError, match="PatientName: its new value has characters that the "
                                         "dataset's Specific Character Set"):
        morph(ds, {"action": "set", "tag": "PatientName", "value": value})


@pytest.mark.parametrize(("charset", "value"), [
    ("ISO_IR 100", "Müller^Jürgen"),
    ("ISO_IR 192", "Šimůnek^山田"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    ("ISO_IR 144", "Иванов^Иван"),
    ("GB18030", "王^小东"),
    (None, "Doe^John"),
])
def test_a_value_the_character_set_encodes_is_written_and_reads_back(
        charset: str | list[str] | None, value: str, tmp_path: Path) -> None:
    ds = _charset(charset, PatientName="X", SOPInstanceUID=generate_uid())
    morph(ds, {"action": "set", "tag": "PatientName", "value": value})
    ds.save_as(tmp_path / "x.dcm", implicit_vr=False, little_endian=True)
    assert str(dcmread(tmp_path / "x.dcm", force=True).PatientName) == value


def test_text_carried_from_the_dataset_passes_and_a_new_character_set_first_lets_any_in(
        ) -> None:
    """A prefix on an undeclared 8-bit value writes its bytes back as read; setting
    SpecificCharacterSet first is the way to write what the old set cannot encode."""
    ds = _charset(None, PatientName=b"M\xfcller")
    morph(ds, {"action": "prefix", "tag": "PatientName", "value": "Dr "})
    assert str(ds.PatientName) == "Dr Müller"
    ds = _charset("ISO_IR 100", InstitutionName="Klinik")
    morph(ds, {"action": "set", "tag": "SpecificCharacterSet", "value": "ISO_IR 192"},
          {"action": "set", "tag": "InstitutionName", "value": "Šternberk"})
    assert ds.InstitutionName == "Šternberk"


def test_a_sequence_item_is_checked_against_its_own_character_set() -> None:
    ds = _charset("ISO_IR 100", PatientName="Doe^John")
    ds.RequestAttributesSequence = Sequence([_charset("ISO_IR 192", AccessionNumber="A")])
    morph(ds, {"action": "set", "tag": "RequestAttributesSequence[0].RequestedProcedureID",
               "value": "Š1"})
    with pytest.raises(MorphError, match="ISO_IR 100"):
        morph(ds, {"action": "set", "tag": "StudyDescription", "value": "Š1"})


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_morph_keeps_the_bytes_of_text_it_does_not_touch_even_when_they_do_not_decode(
        syntax: str, tmp_path: Path) -> None:
    """Regression: morph_file decoded every element (to check the nesting), pydicom decoded
    a Latin-1 byte in an ISO_IR 192 dataset as U+FFFD and wrote that back: a morph of
    InstitutionName sent PatientName b'M\\xef\\xbf\\xbdller' instead of b'M\\xfcller'.
    A nested value too; only a change of SpecificCharacterSet re-encodes what it does
    not touch."""
    ds = _image(PixelData=bytes(range(4)), SpecificCharacterSet="ISO_IR 192")
    ds[0x00100010] = DataElement(0x00100010, "PN", b"M\xfcller^J\xfcrgen ")
    ds.RequestAttributesSequence = Sequence([item(AccessionNumber="A1")])
    ds.RequestAttributesSequence[0][0x00321060] = DataElement(0x00321060, "LO", b"Kn\xe9e")
    source = _write(tmp_path / "bad.dcm", ds, syntax, CTImageStorage)
    target = tmp_path / "out.dcm"
    morph_file(source, target, actions({"action": "set", "tag": "InstitutionName",
                                        "value": "Klinik"}))
    out = dcmread(target)
    assert out.get_item(0x00100010).value == b"M\xfcller^J\xfcrgen "
    assert out.RequestAttributesSequence[0].get_item(0x00321060).value == b"Kn\xe9e"
    morph_file(source, target, actions(
        {"action": "set", "tag": "SpecificCharacterSet", "value": "ISO_IR 100"}))
    assert dcmread(target).get_item(0x00100010).value != b"M\xfcller^J\xfcrgen "  # re-encoded
