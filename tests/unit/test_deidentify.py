"""The PS3.15 Annex E Basic Profile and its options, attribute by attribute; consistent UIDs."""

from __future__ import annotations

import copy
import hashlib
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import validate_value

from router.core.deid_spec import DeidentifyConfig
from workers.transforms.burned_in_pixels import BurnedInAnnotationRefused, BurnedInNote
from workers.transforms.deid_actions import removed_attributes
from workers.transforms.deid_table import TABLE_E1_1
from workers.transforms.deidentify import deidentify, deidentify_file
from workers.transforms.uid_map import UidMap

from .deid_samples import (
    EXPECTED,
    IDENTIFIERS,
    INSTANCE_1,
    INSTANCE_2,
    NOT_IN_TABLE,
    OPTIONS,
    SERIES_A,
    SERIES_B,
    STUDY,
    TABLE_COLUMNS,
    TAG_OF,
    UID_RE,
    UTC_SYNCHRONIZATION,
    build,
)


@pytest.fixture
def uids(tmp_path: Path) -> Iterator[UidMap]:
    with UidMap(tmp_path / "deid.key", tmp_path / "deid-map.sqlite3") as uid_map:
        yield uid_map


def expected_action(code: str, option: str | None, option_code: str,
                    config: DeidentifyConfig, keyword: str, vr: str) -> str:
    if keyword in config.keep:
        return "K"
    if option and getattr(config, option):
        return option_code
    if code == "X/Z/U*":
        return "U*"
    choices = code.split("/")
    return "Z" if vr == "SQ" and "Z" in choices else choices[-1]


def assert_state(ds: Dataset, keyword: str, vr: str, original: object, action: str,
                 uid_map: UidMap, pseudonym: str) -> None:
    tag = TAG_OF.get(keyword, keyword)
    shown = f"{keyword} ({action})"
    if action == "X":
        assert tag not in ds, shown
        return
    assert tag in ds, shown
    value = ds[tag].value
    if keyword in ("PatientName", "PatientID"):
        assert str(value) == pseudonym, shown
    elif vr == "SQ":
        assert_sequence(ds, keyword, action, uid_map)
    elif action == "Z":
        assert value in ("", None), shown
    elif action == "D":
        assert value not in ("", None) and value != original, shown
        validate_value(vr, value, pydicom_config.RAISE)
    elif action == "U" and str(original).startswith("1.2.840.10008."):
        assert value == original, shown
    elif action == "U":
        assert value != original and UID_RE.fullmatch(value) and len(value) <= 64, shown
        assert uid_map.lookup(value) == original, shown
    elif action == "C":
        assert not any(word.lower() in str(value).lower() for word in IDENTIFIERS), shown
        assert str(value).replace("***", "") != "", shown
    else:
        assert value == original, shown


def assert_sequence(ds: Dataset, keyword: str, action: str, uid_map: UidMap) -> None:
    items = list(ds[keyword].value)
    if action == "Z":
        assert items == [], keyword
    elif action == "D":
        assert len(items) == 1 and len(items[0]) == 0, keyword
    elif keyword == "ReferencedImageSequence" and action == "U*":
        assert uid_map.lookup(items[0].ReferencedSOPInstanceUID) == INSTANCE_2
        assert items[0].ReferencedSOPClassUID == CTImageStorage
    elif keyword == "ReferencedImageSequence":
        assert items[0].ReferencedSOPInstanceUID == INSTANCE_2
    elif keyword == "ReferencedStudySequence":
        assert items[0].ReferencedSOPInstanceUID == STUDY
    elif keyword == "RequestAttributesSequence":  # kept by C: its items went through
        assert items[0].AccessionNumber in ("", None)
        assert "RequestedProcedureID" not in items[0]
        assert items[0].RequestedProcedurePriority == "HIGH"
        assert "JOHN" not in items[0].ScheduledProcedureStepDescription


CONFIGS = [DeidentifyConfig()] + [DeidentifyConfig(**{option: True}) for option in OPTIONS] \
    + [DeidentifyConfig(**dict.fromkeys(OPTIONS, True))]


# --- The table --------------------------------------------------------------------------


def test_the_table_has_every_row_of_table_e1_1() -> None:
    tags = [row[0] for row in TABLE_E1_1]
    assert len(tags) == len(set(tags)) == 655  # PS3.15 2026c, less the private-attributes row
    assert tags == sorted(tags)
    basic = {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    assert {row[2] for row in TABLE_E1_1} == basic
    assert {code for row in TABLE_E1_1 for code in row[3:]} == {"", "K", "C"}
    assert all(re.fullmatch(r"[0-9A-FX]{8}", tag) for tag in tags)
    assert all(re.fullmatch(r"[A-Z][A-Za-z0-9]+", row[1]) for row in TABLE_E1_1)


@pytest.mark.parametrize("keyword, vr, value, code, option, option_code", EXPECTED)
def test_the_expectations_copied_from_the_standard_agree_with_the_table(
        keyword: str, vr: str, value: object, code: str, option: str | None,
        option_code: str) -> None:
    row = next(row for row in TABLE_E1_1 if row[1] == keyword)
    assert row[2] == code
    columns = dict(zip(TABLE_COLUMNS, row[3:], strict=True))
    assert {name: c for name, c in columns.items() if c} == \
        ({option: option_code} if option else {}) | \
        ({"retain_device_identity": "K"} if keyword == "DeviceUID" else {})


# --- Each attribute ends as the table says -------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "+".join(
    name for name in OPTIONS if getattr(c, name)) or "basic")
def test_each_attribute_ends_as_the_table_says(config: DeidentifyConfig, uids: UidMap) -> None:
    ds = build()
    changed = deidentify(ds, config, uids)
    pseudonym = uids.pseudonym("PID12345")  # build() has an issuer: not in the key
    for keyword, vr, value, code, option, option_code in EXPECTED:
        action = expected_action(code, option, option_code, config, keyword, vr)
        if keyword == "DeviceUID" and config.retain_device_identity:
            action = "K"
        assert_state(ds, keyword, vr, value, action, uids, pseudonym)
        if action in ("X", "Z", "D", "U") and value != UTC_SYNCHRONIZATION:
            assert {"CurveData": "CurveDimensions"}.get(keyword, keyword) in changed
    for keyword, value in NOT_IN_TABLE.items():
        assert ds[TAG_OF.get(keyword, keyword)].value == value
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ds.SeriesInstanceUID
    assert 0x00091001 not in ds and 0x00090010 not in ds and 0x00091002 not in ds


def test_the_result_names_attributes_never_values(uids: UidMap) -> None:
    ds = build()
    changed = deidentify(ds, DeidentifyConfig(), uids)
    for expected in ("PatientBirthDate", "AccessionNumber", "RequestAttributesSequence",
                     "ReferencedImageSequence>ReferencedSOPInstanceUID", "OverlayData",
                     "(0009,1001)", "CurveDimensions", "StudyInstanceUID"):
        assert expected in changed
    assert "SynchronizationFrameOfReferenceUID" not in changed  # a well-known UID: kept
    assert "Modality" not in changed
    text = " ".join(changed)
    assert not any(word in text for word in (*IDENTIFIERS, STUDY, "19700101"))


def test_a_sequence_with_d_keeps_nothing_of_its_items(uids: UidMap) -> None:
    ds = build()
    deidentify(ds, DeidentifyConfig(), uids)
    assert len(ds.ContentSequence) == 1 and "TextValue" not in ds.ContentSequence[0]


def test_keep_keeps_attributes_anywhere_and_items_still_go_through(uids: UidMap) -> None:
    config = DeidentifyConfig(keep=["PatientBirthDate", "(0008,1030)",
                                    "RequestAttributesSequence"])
    ds = build()
    changed = deidentify(ds, config, uids)
    assert ds.PatientBirthDate == "19700101" and ds.StudyDescription == "CT HEAD for DOE"
    assert ds.RequestAttributesSequence[0].AccessionNumber in ("", None)
    assert "RequestAttributesSequence>AccessionNumber" in changed
    assert "Some attributes retained by configuration" in ds.DeidentificationMethod


def test_private_attributes_can_be_kept(uids: UidMap) -> None:
    ds = build()
    deidentify(ds, DeidentifyConfig(private_tags="keep"), uids)
    assert ds[0x00091001].value == "private DOE"
    # The standard attributes inside a kept private sequence still go through the table.
    assert str(ds[0x00091002].value[0].PatientName) == uids.pseudonym("PID12345")
    assert "Private attributes retained" in ds.DeidentificationMethod


def test_keep_names_a_private_attribute_too(uids: UidMap) -> None:
    ds = build()
    deidentify(ds, DeidentifyConfig(keep=["(0009,0010)", "(0009,1001)"]), uids)
    assert ds[0x00091001].value == "private DOE" and 0x00091002 not in ds


def test_configured_patient_name_and_id(uids: UidMap) -> None:
    ds = build()
    deidentify(ds, DeidentifyConfig(patient_id="TRIAL-001", patient_name="TRIAL^001"), uids)
    assert ds.PatientID == "TRIAL-001" and str(ds.PatientName) == "TRIAL^001"


def test_one_patient_is_one_pseudonymous_patient_across_studies(uids: UidMap) -> None:
    first, second, other = build(), build(), build()
    second.StudyInstanceUID = "1.2.826.0.1.3680043.9.99"
    other.PatientID = "SOMEONE-ELSE"
    for ds in (first, second, other):
        deidentify(ds, DeidentifyConfig(), uids)
    assert first.PatientID == second.PatientID != other.PatientID
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert uids.lookup(first.PatientID) == "PID12345"  # the ID alone, issuer or not


# --- Overlays ---------------------------------------------------------------------------------


@pytest.mark.parametrize("clean", [False, True])
def test_overlay_text_goes_or_is_cleaned_in_every_overlay_group(clean: bool,
                                                                uids: UidMap) -> None:
    """OverlayDescription and OverlayLabel, typed at the modality, went out as they were:
    Table E.1-1 lists only the overlay's data and comments."""
    ds = build()
    for group in (0x6000, 0x6002):
        ds.add_new(group << 16 | 0x0022, "LO", "arrow at PID12345")
        ds.add_new(group << 16 | 0x1500, "LO", "PID12345 lesion")
    changed = deidentify(ds, DeidentifyConfig(clean_descriptions=clean), uids)
    for group in (0x6000, 0x6002):
        for element in (0x0022, 0x1500):
            tag = group << 16 | element
            assert (tag in ds) == clean
            if clean:
                assert "PID12345" not in str(ds[tag].value)
    assert "OverlayDescription" in changed and "OverlayLabel" in changed
    assert ds[0x60000010].value == 2  # the overlay's geometry stays


# --- Burned-in text --------------------------------------------------------------------------


def test_burned_in_annotation_yes_is_refused_unless_the_config_sends_it(uids: UidMap) -> None:
    """The pixels carry text (the patient's name, often) that the attribute-level profile
    cannot remove: it left for a de-identified destination without a word."""
    ds = build()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationRefused, match="pixel data may identify the patient"):
        deidentify(ds, DeidentifyConfig(), uids)
    notes: list[BurnedInNote] = []
    deidentify(ds, DeidentifyConfig(burned_in_annotation="send"), uids, notes)
    assert ds.PatientIdentityRemoved == "YES"
    assert [note.kind for note in notes] == ["annotated"]


def test_recognizable_visual_features_yes_is_refused_unless_the_config_sends_it(
        uids: UidMap) -> None:
    """A face in a photograph or a 3D rendering identifies the patient as burned-in text
    does, and it left de-identified without a word: RecognizableVisualFeatures was not read."""
    ds = build()
    ds.Modality = "CT"
    ds.RecognizableVisualFeatures = "YES"
    with pytest.raises(BurnedInAnnotationRefused, match="RecognizableVisualFeatures YES"):
        deidentify(ds, DeidentifyConfig(), uids)
    notes: list[BurnedInNote] = []
    deidentify(ds, DeidentifyConfig(burned_in_annotation="send"), uids, notes)
    assert [note.kind for note in notes] == ["recognizable"]
    plain = build()
    plain.Modality = "CT"
    plain.RecognizableVisualFeatures = "NO"
    deidentify(plain, DeidentifyConfig(), uids)  # NO (or absent) goes as before


@pytest.mark.parametrize(("tags", "kind"), [
    ({"Modality": "US"}, "ultrasound"),
    ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "secondary_capture"),
    ({"Modality": "", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, "document"),
    ({"Modality": "CT"}, None),
    ({"Modality": "US", "BurnedInAnnotation": "NO"}, None)])
def test_a_class_that_often_has_burned_in_text_is_noted_when_it_does_not_say(
        tags: dict[str, str], kind: str | None, uids: UidMap) -> None:
    ds = build()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    notes: list[BurnedInNote] = []
    deidentify(ds, DeidentifyConfig(), uids, notes)
    assert [note.kind for note in notes] == ([kind] if kind else [])


def test_one_id_from_two_issuers_is_two_pseudonymous_patients(uids: UidMap) -> None:
    """pseudonym_key issuer_and_patient_id: two patients with one ID from two hospitals
    stay two research patients. Without an issuer the pseudonym is the one it was."""
    first, second, plain = build(), build(), build()
    second.IssuerOfPatientID = "ST ELSEWHERE"
    del plain.IssuerOfPatientID
    for ds in (first, second, plain):
        deidentify(ds, DeidentifyConfig(pseudonym_key="issuer_and_patient_id"), uids)
    assert len({first.PatientID, second.PatientID, plain.PatientID}) == 3
    assert plain.PatientID == uids.pseudonym("PID12345")  # existing sites' mapping
    assert uids.lookup(first.PatientID) == "GENERAL HOSPITAL\\PID12345"


def test_by_default_the_issuer_is_not_part_of_the_pseudonym(tmp_path: Path) -> None:
    """The pseudonym e53fa78 gave an instance with an issuer, under a fixed key: keying on
    the issuer by default split studies in progress across the upgrade."""
    key = tmp_path / "deid.key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    ds = Dataset()
    ds.PatientID, ds.IssuerOfPatientID, ds.PatientName = "PID12345", "GENERAL HOSPITAL", "Doe"
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.2", "CT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.1.1"
    other = copy.deepcopy(ds)
    other.IssuerOfPatientID = "ST ELSEWHERE"
    with UidMap(key, tmp_path / "map.sqlite3") as uids:
        deidentify(ds, DeidentifyConfig(), uids)
        deidentify(other, DeidentifyConfig(), uids)
    assert ds.PatientID == ds.PatientName == other.PatientID == "ANON-44UGIIXDS5TSYV5X"


# --- The record of what was done -------------------------------------------------------------


def test_the_deidentification_method_attributes(uids: UidMap) -> None:
    ds = build()
    deidentify(ds, DeidentifyConfig(), uids)
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert "Basic Application Confidentiality Profile" in ds.DeidentificationMethod
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in
             ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM")]

    ds = build()
    deidentify(ds, CONFIGS[-1], uids)
    codes = {i.CodeValue for i in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113105", "113106", "113108", "113109", "113110"}
    assert {i.CodingSchemeDesignator for i in ds.DeidentificationMethodCodeSequence} == {"DCM"}
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert all(len(value) <= 64 for value in ds.DeidentificationMethod)
    assert "Retain UIDs Option" in ds.DeidentificationMethod


def test_a_second_pass_adds_no_duplicate_codes(uids: UidMap) -> None:
    ds = build()
    deidentify(ds, DeidentifyConfig(), uids)
    deidentify(ds, DeidentifyConfig(retain_dates=True), uids)
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113106"]


def test_removed_attributes_lists_what_goes() -> None:
    listed = dict(removed_attributes(DeidentifyConfig()))
    assert len(listed) == 665  # every row, overlay text, location URLs, private attributes
    assert listed["PatientBirthDate"] == "Z" and listed["StudyDescription"] == "X"
    assert listed["PatientID"] == "D" and listed["StudyInstanceUID"] == "U"
    assert listed["ReferencedImageSequence"] == "U*" and listed["OverlayData"] == "X"
    assert listed["OverlayDescription"] == listed["OverlayLabel"] == "X"
    assert listed["ReferencedStudySequence"] == "Z" and listed["ContentSequence"] == "D"
    everything = dict(removed_attributes(DeidentifyConfig(
        **dict.fromkeys(OPTIONS, True), keep=["PatientName"], private_tags="keep")))
    for kept in ("PatientName", "PatientAge", "StudyDate", "StudyInstanceUID",
                 "DeviceSerialNumber", "ReferencedImageSequence"):
        assert kept not in everything
    assert everything["StudyDescription"] == "C" and everything["PatientBirthDate"] == "Z"


# --- UIDs ----------------------------------------------------------------------------------


def test_the_same_uid_maps_to_the_same_new_uid_across_a_study(uids: UidMap) -> None:
    first = build(SERIES_A, INSTANCE_1, referenced=INSTANCE_2)
    second = build(SERIES_B, INSTANCE_2, referenced=INSTANCE_1)
    for ds in (first, second):
        deidentify(ds, DeidentifyConfig(), uids)
    assert first.StudyInstanceUID == second.StudyInstanceUID != STUDY
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    # Each instance's reference points at the other's new SOP Instance UID.
    assert first.ReferencedImageSequence[0].ReferencedSOPInstanceUID == second.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert len(first.ReferencedStudySequence) == 0 == len(second.ReferencedStudySequence)
    assert uids.lookup(first.StudyInstanceUID) == STUDY
    assert uids.replacements(STUDY) == [first.StudyInstanceUID]


def test_the_map_survives_a_restart(tmp_path: Path) -> None:
    key, db = tmp_path / "deid.key", tmp_path / "map.sqlite3"
    with UidMap(key, db) as before:
        ds = build()
        deidentify(ds, DeidentifyConfig(), before)
        new = ds.SOPInstanceUID
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    with UidMap(key, db) as after:
        assert after.lookup(new) == INSTANCE_1  # stored, not just recomputed
        again = build()
        deidentify(again, DeidentifyConfig(), after)
        assert again.SOPInstanceUID == new
        assert after.lookup("2.25.1") is None


def test_configured_uid_root_is_used(uids: UidMap) -> None:
    ds = build()
    deidentify(ds, DeidentifyConfig(uid_root="1.2.826.0.1.3680043.10.543"), uids)
    assert ds.StudyInstanceUID.startswith("1.2.826.0.1.3680043.10.543.")


# --- Files ---------------------------------------------------------------------------------


def write_source(path: Path, transfer_syntax: str) -> None:
    ds = build()
    ds.SOPClassUID = CTImageStorage
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.SourceApplicationEntityTitle = "CT-ROOM-3"
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_deidentify_file_writes_a_copy(transfer_syntax: str, tmp_path: Path,
                                       uids: UidMap) -> None:
    source, target = tmp_path / "in.dcm", tmp_path / "out" / "out.dcm"
    target.parent.mkdir()
    write_source(source, transfer_syntax)
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    mtime = source.stat().st_mtime_ns

    changed = deidentify_file(source, target, DeidentifyConfig(), uids)

    assert hashlib.sha256(source.read_bytes()).hexdigest() == before
    assert source.stat().st_mtime_ns == mtime
    out = dcmread(target)
    assert out.file_meta.TransferSyntaxUID == transfer_syntax
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != INSTANCE_1
    assert uids.lookup(out.SOPInstanceUID) == INSTANCE_1
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert "MediaStorageSOPInstanceUID" in changed
    assert out.PixelData == b"\x00\x01\x02\x03\x04\x05\x06\x07"
    assert out.PatientIdentityRemoved == "YES" and "PatientBirthDate" in out
    assert [p.name for p in target.parent.iterdir()] == ["out.dcm"]  # no temporary left


def test_deidentify_file_refuses_to_overwrite_its_source(tmp_path: Path, uids: UidMap) -> None:
    source = tmp_path / "in.dcm"
    write_source(source, ExplicitVRLittleEndian)
    before = source.read_bytes()
    with pytest.raises(ValueError, match="source"):
        deidentify_file(source, tmp_path / "." / "in.dcm", DeidentifyConfig(), uids)
    assert source.read_bytes() == before


def test_retained_uids_leave_the_file_meta_alone(tmp_path: Path, uids: UidMap) -> None:
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    write_source(source, ExplicitVRLittleEndian)
    deidentify_file(source, target, DeidentifyConfig(retain_uids=True,
                                                     retain_device_identity=True), uids)
    out = dcmread(target)
    assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID == INSTANCE_1


def test_instance_uids_in_attributes_outside_the_table_are_mapped_too(uids: UidMap) -> None:
    """SOPInstanceUIDOfConcatenationSource, MultiFrameSourceSOPInstanceUID and
    VolumeFrameOfReferenceUID have no row in Table E.1-1 and went out as they came: the
    original UIDs beside their replacements linked the copy back to the identified one.
    Now every public UI attribute outside the table is mapped as U (Posda does the same),
    consistently, but for those naming kinds of things (classes, syntaxes, schemes)."""
    source = "1.2.826.0.1.3680043.8.498.19610203.10"
    ds = build(INSTANCE_1, SERIES_A, INSTANCE_2)
    ds.SOPInstanceUID = source
    ds.SOPInstanceUIDOfConcatenationSource = source
    ds.MultiFrameSourceSOPInstanceUID = source
    ds.VolumeFrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.19610203.1.9"
    ds.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.CodingSchemeUID = "2.16.840.1.113883.6.96"  # SNOMED CT: a scheme, not an instance
    ds.ReferencedSOPClassUIDInFile = CTImageStorage
    changed = deidentify(ds, DeidentifyConfig(), uids)
    assert ds.SOPInstanceUID != source and uids.lookup(ds.SOPInstanceUID) == source
    assert ds.SOPInstanceUIDOfConcatenationSource == ds.SOPInstanceUID
    assert ds.MultiFrameSourceSOPInstanceUID == ds.SOPInstanceUID
    assert uids.lookup(ds.VolumeFrameOfReferenceUID) == "1.2.826.0.1.3680043.8.498.19610203.1.9"
    assert {"SOPInstanceUIDOfConcatenationSource", "VolumeFrameOfReferenceUID"} <= set(changed)
    assert (ds.TransferSyntaxUID, ds.CodingSchemeUID, ds.ReferencedSOPClassUIDInFile) == (
        ExplicitVRLittleEndian, "2.16.840.1.113883.6.96", CTImageStorage)
    kept = build(INSTANCE_1, SERIES_A, INSTANCE_2)
    kept.VolumeFrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.19610203.1.9"
    deidentify(kept, DeidentifyConfig(retain_uids=True), uids)
    assert kept.VolumeFrameOfReferenceUID == "1.2.826.0.1.3680043.8.498.19610203.1.9"


def test_urls_of_the_original_instances_go_unless_uids_are_retained(uids: UidMap) -> None:
    """RetrieveURL and RetrieveURI, which Table E.1-1 does not list, hold the original study
    UID (and the archive's host): beside the new StudyInstanceUID they went out as they
    were, at the top and in the Referenced Series Sequence, linking the copy back."""
    ds = build(INSTANCE_1, SERIES_A, INSTANCE_2)
    url = f"https://pacs.example/dicomweb/studies/{STUDY}"
    ds.RetrieveURL = url
    ref = Dataset()
    ref.SeriesInstanceUID, ref.RetrieveURL = SERIES_A, f"{url}/series/{SERIES_A}"
    ref.RetrieveURI = f"https://pacs.example/wado?requestType=WADO&studyUID={STUDY}"
    ds.ReferencedSeriesSequence = [ref]
    kept = copy.deepcopy(ds)
    changed = deidentify(ds, DeidentifyConfig(), uids)
    assert "RetrieveURL" not in ds and "ReferencedSeriesSequence>RetrieveURI" in changed
    assert not {"RetrieveURL", "RetrieveURI"} & set(ds.ReferencedSeriesSequence[0].dir())
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID != SERIES_A
    deidentify(kept, DeidentifyConfig(retain_uids=True), uids)
    assert kept.RetrieveURL == url and kept.ReferencedSeriesSequence[0].RetrieveURI


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_kept_text_keeps_its_bytes_even_when_they_do_not_decode(
        transfer_syntax: str, tmp_path: Path, uids: UidMap) -> None:
    """Regression: every element was decoded on the way through, and pydicom decodes a
    Latin-1 byte in an ISO_IR 192 dataset as U+FFFD and writes that back: a kept
    Manufacturer b'M\\xfcller' arrived as b'M\\xef\\xbf\\xbdller'. What de-identification
    keeps is now written as it was read; what it replaces is still replaced."""
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    write_source(source, transfer_syntax)
    ds = dcmread(source)
    ds.SpecificCharacterSet = "ISO_IR 192"
    # LO without a row in Table E.1-1 (kept), with the Latin-1 bytes a modality sent
    ds[0x00080070] = DataElement(0x00080070, "LO", b"M\xfcller")
    ds.save_as(source, enforce_file_format=True)

    deidentify_file(source, target, DeidentifyConfig(), uids)

    out = dcmread(target)
    assert out.get_item(0x00080070).value == b"M\xfcller"
    assert out.PatientIdentityRemoved == "YES" and out.PatientName != build().PatientName
