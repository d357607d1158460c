"""The PS3.15 Annex E Basic Profile and its options, attribute by attribute; consistent UIDs."""

from __future__ import annotations

import ast
import hashlib
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import validate_value

from router.core.deid_spec import DeidentifyConfig
from workers.transforms.deid_table import TABLE_E1_1
from workers.transforms.deidentify import deidentify, deidentify_file, removed_attributes
from workers.transforms.uid_map import UidMap, load_or_create_secret

UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
STUDY, SERIES_A, SERIES_B = "1.2.826.0.1.3680043.9.1", "1.2.826.0.1.3680043.9.2", \
    "1.2.826.0.1.3680043.9.3"
INSTANCE_1, INSTANCE_2 = "1.2.826.0.1.3680043.9.11", "1.2.826.0.1.3680043.9.12"
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.9.21"
UTC_SYNCHRONIZATION = "1.2.840.10008.15.1.1"  # a well-known UID: names no instance

# Copied from PS3.15 Table E.1-1 (2026c) by hand, not from workers.deid_table (a test checks
# that the two agree): (keyword, VR, value, Basic Profile code, the option that keeps it
# (K) or cleans it (C), that option's code).
EXPECTED: list[tuple[str, str, object, str, str | None, str]] = [
    ("PatientName", "PN", "DOE^JOHN", "Z", None, ""),
    ("PatientID", "LO", "PID12345", "Z/D", None, ""),
    ("PatientBirthDate", "DA", "19700101", "Z", None, ""),
    ("PatientBirthTime", "TM", "101500", "X", None, ""),
    ("IssuerOfPatientID", "LO", "GENERAL HOSPITAL", "X", None, ""),
    ("OtherPatientIDs", "LO", "OTHER-778", "X", None, ""),
    ("PatientAddress", "LO", "12 Main Street", "X", None, ""),
    ("PatientSex", "CS", "M", "Z", "retain_patient_characteristics", "K"),
    ("PatientAge", "AS", "054Y", "X", "retain_patient_characteristics", "K"),
    ("PatientSize", "DS", "1.80", "X", "retain_patient_characteristics", "K"),
    ("PatientWeight", "DS", "80", "X", "retain_patient_characteristics", "K"),
    ("EthnicGroup", "SH", "GROUP A", "X", "retain_patient_characteristics", "K"),
    ("MedicalAlerts", "LO", "Alert for DOE", "X", "clean_descriptions", "C"),
    ("AdditionalPatientHistory", "LT", "History of JOHN DOE", "X", "clean_descriptions", "C"),
    ("AccessionNumber", "SH", "ACC998877", "Z", None, ""),
    ("StudyID", "SH", "STUDY42", "Z", None, ""),
    ("InstitutionName", "LO", "General Hospital", "X/Z/D", None, ""),
    ("InstitutionAddress", "ST", "1 Hospital Road", "X", None, ""),
    ("ReferringPhysicianName", "PN", "WHO^REFERS", "Z", None, ""),
    ("PerformingPhysicianName", "PN", "WHO^PERFORMS", "X", None, ""),
    ("PhysiciansOfRecord", "PN", "WHO^RECORDS", "X", None, ""),
    ("OperatorsName", "PN", "WHO^OPERATES", "X/Z/D", None, ""),
    ("ContentCreatorName", "PN", "WHO^CREATES", "Z/D", None, ""),
    ("StudyDate", "DA", "20240102", "Z", "retain_dates", "K"),
    ("StudyTime", "TM", "083000", "Z", "retain_dates", "K"),
    ("SeriesDate", "DA", "20240102", "X/D", "retain_dates", "K"),
    ("ContentDate", "DA", "20240102", "Z/D", "retain_dates", "K"),
    ("ContentTime", "TM", "083512", "Z/D", "retain_dates", "K"),
    ("InstanceCreationDate", "DA", "20240103", "X/D", "retain_dates", "K"),
    ("AcquisitionDateTime", "DT", "20240102083100", "X/Z/D", "retain_dates", "K"),
    ("StudyDescription", "LO", "CT HEAD for DOE", "X", "clean_descriptions", "C"),
    ("SeriesDescription", "LO", "AXIAL PID12345", "X", "clean_descriptions", "C"),
    ("ProtocolName", "LO", "HEAD ROUTINE", "X/D", "clean_descriptions", "C"),
    ("ImageComments", "LT", "Comment ACC998877 JOHN", "X", "clean_descriptions", "C"),
    ("DerivationDescription", "ST", "Derived", "X", "clean_descriptions", "C"),
    ("DeviceSerialNumber", "LO", "SN-4711", "X/Z/D", "retain_device_identity", "K"),
    ("StationName", "SH", "CT-ROOM-3", "X/Z/D", "retain_device_identity", "K"),
    ("DetectorID", "SH", "DET-9", "X/D", "retain_device_identity", "K"),
    ("StudyInstanceUID", "UI", STUDY, "U", "retain_uids", "K"),
    ("SeriesInstanceUID", "UI", SERIES_A, "U", "retain_uids", "K"),
    ("SOPInstanceUID", "UI", INSTANCE_1, "U", "retain_uids", "K"),
    ("FrameOfReferenceUID", "UI", FRAME_OF_REFERENCE, "U", "retain_uids", "K"),
    ("InstanceCreatorUID", "UI", "1.2.826.0.1.3680043.9.31", "U", "retain_uids", "K"),
    ("IrradiationEventUID", "UI", "1.2.826.0.1.3680043.9.32", "U", "retain_uids", "K"),
    ("DeviceUID", "UI", "1.2.826.0.1.3680043.9.33", "U", "retain_uids", "K"),
    ("SynchronizationFrameOfReferenceUID", "UI", UTC_SYNCHRONIZATION, "U", "retain_uids", "K"),
    ("ReferencedStudySequence", "SQ", None, "X/Z", "retain_uids", "K"),
    ("ReferencedImageSequence", "SQ", None, "X/Z/U*", "retain_uids", "K"),
    ("RequestAttributesSequence", "SQ", None, "X", "clean_descriptions", "C"),
    ("ContentSequence", "SQ", None, "D", None, ""),
    ("OverlayData", "OW", b"\x01\x02" * 8, "X", None, ""),
    ("OverlayComments", "LT", "Overlay by WHO", "X", None, ""),
    ("CurveData", "US", 1, "X", None, ""),
]
# Not in the table: kept as they are.
NOT_IN_TABLE = {"Modality": "CT", "SOPClassUID": CTImageStorage, "Manufacturer": "ACME",
                "BodyPartExamined": "HEAD", "OverlayRows": 2}
# (5000,0005) is Curve Dimensions, one element of the curve group the table's row removes.
TAG_OF = {"OverlayData": 0x60003000, "OverlayComments": 0x60004000, "CurveData": 0x50000005,
          "OverlayRows": 0x60000010}
OPTIONS = ["retain_uids", "retain_dates", "retain_device_identity",
           "retain_patient_characteristics", "clean_descriptions"]
# The option columns of workers.deid_table, in its order.
TABLE_COLUMNS = ["retain_uids", "retain_device_identity", "retain_patient_characteristics",
                 "retain_dates", "clean_descriptions"]
IDENTIFIERS = ("DOE", "JOHN", "PID12345", "ACC998877")


def code_item(value: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", value
    return item


def build(series: str = SERIES_A, instance: str = INSTANCE_1,
          referenced: str = INSTANCE_2) -> Dataset:
    """An instance with every attribute of EXPECTED and NOT_IN_TABLE, and private ones."""
    ds = Dataset()
    for keyword, vr, value, *_ in EXPECTED:
        if vr != "SQ":
            ds.add_new(TAG_OF.get(keyword, keyword), vr, value)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series, instance
    ds.Modality, ds.SOPClassUID, ds.Manufacturer = "CT", CTImageStorage, "ACME"
    ds.BodyPartExamined = "HEAD"
    ds.add_new(0x60000010, "US", 2)  # Overlay Rows
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = CTImageStorage, \
        referenced
    ds.ReferencedImageSequence = Sequence([reference])
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = "1.2.840.10008.3.1.2.3.1", \
        STUDY
    ds.ReferencedStudySequence = Sequence([study])
    request = Dataset()
    request.AccessionNumber, request.RequestedProcedureID = "ACC998877", "RP1"
    request.RequestedProcedurePriority = "HIGH"  # not in the table
    request.ScheduledProcedureStepDescription = "Scan JOHN"
    ds.RequestAttributesSequence = Sequence([request])
    content = Dataset()
    content.TextValue = "Report on John Doe"
    ds.ContentSequence = Sequence([content])
    series_reference = Dataset()  # not in the table: kept, its items go through the table
    series_reference.SeriesInstanceUID = series
    ds.ReferencedSeriesSequence = Sequence([series_reference])
    ds.add_new(0x00090010, "LO", "ACME PRIVATE")
    ds.add_new(0x00091001, "LO", "private DOE")
    private_sequence = Dataset()
    private_sequence.PatientName = "DOE^JOHN"
    ds.add_new(0x00091002, "SQ", Sequence([private_sequence]))
    return ds


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
    pseudonym = uids.pseudonym("PID12345")
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
    assert uids.lookup(first.PatientID) == "PID12345"


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
    assert len(listed) == 656  # every row, and the private attributes
    assert listed["PatientBirthDate"] == "Z" and listed["StudyDescription"] == "X"
    assert listed["PatientID"] == "D" and listed["StudyInstanceUID"] == "U"
    assert listed["ReferencedImageSequence"] == "U*" and listed["OverlayData"] == "X"
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


def test_another_key_gives_other_uids(tmp_path: Path) -> None:
    with UidMap(tmp_path / "a.key", tmp_path / "a.db") as a, \
            UidMap(tmp_path / "b.key", tmp_path / "b.db") as b:
        assert a.new_uid(STUDY) != b.new_uid(STUDY)


@pytest.mark.parametrize("root", ["2.25", "1.2.826.0.1.3680043.10.543",
                                  "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.1789"])
def test_new_uids_are_valid(root: str, uids: UidMap) -> None:
    assert len(root) <= 43
    for original in ("1.2.3", "9" * 64, "0.0", "not a uid", ""):
        new = uids.new_uid(original, root)
        assert UID_RE.fullmatch(new) and len(new) <= 64 and new.startswith(root + ".")
        assert uids.new_uid(original, root) == new
    if root == "2.25":
        number = int(uids.new_uid(STUDY).removeprefix("2.25."))
        assert number < 2**128 and (number >> 76) & 0xF == 8 and (number >> 62) & 0x3 == 2


def test_configured_uid_root_is_used(uids: UidMap) -> None:
    ds = build()
    deidentify(ds, DeidentifyConfig(uid_root="1.2.826.0.1.3680043.10.543"), uids)
    assert ds.StudyInstanceUID.startswith("1.2.826.0.1.3680043.10.543.")


def test_workers_share_the_map_and_the_key(tmp_path: Path) -> None:
    """Several UidMaps (each its own sqlite connection, as in separate worker processes)
    created and written at once: one key, no "database is locked", every pair stored."""
    key, db = tmp_path / "deid.key", tmp_path / "map.sqlite3"
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(n: int) -> None:
        try:
            start.wait()
            with UidMap(key, db) as uid_map:
                results[n] = [uid_map.new_uid(f"1.2.3.{i}") for i in range(150)]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert all(results[n] == results[0] for n in results) and len(results) == 6
    with UidMap(key, db) as uid_map:
        assert uid_map.lookup(results[0][149]) == "1.2.3.149"


def test_the_key_is_created_once_by_racing_processes(tmp_path: Path) -> None:
    path = tmp_path / "deid.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_secret(path)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(keys) == 8 and len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["deid.key"]


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
    assert out.file_meta.SourceApplicationEntityTitle == "CT-ROOM-3"


# --- Config --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"uid_root": "2.25."}, {"uid_root": "01.2"}, {"uid_root": 2.25}, {"uid_root": "1." + "2" * 42},
    {"keep": ["NotAKeyword"]}, {"profile": "enhanced"}, {"private_tags": "safe"},
    {"patient_id": "a\\b"}, {"patient_name": ""}, {"retain_uid": True},
])
def test_config_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DeidentifyConfig(**bad)  # type: ignore[arg-type]


def test_config_is_frozen_and_reads_yaml_shapes() -> None:
    config = DeidentifyConfig.model_validate({
        "retain_dates": True, "uid_root": "1.2.826.0.1.3680043.10.543",
        "keep": ["PatientSex", "(0018,1030)", "00181030"], "private_tags": "keep"})
    with pytest.raises(ValidationError):
        config.retain_uids = True  # type: ignore[misc]
    assert config.profile == "basic" and config.keep[0] == "PatientSex"


def test_the_config_module_does_not_import_pydicom_at_the_top() -> None:
    source = Path(__file__).parents[2] / "router" / "core" / "deid_spec.py"
    tree = ast.parse(source.read_text())
    names = [alias.name for node in tree.body if isinstance(node, ast.Import)
             for alias in node.names]
    names += [node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert not any(name.startswith("pydicom") for name in names)
    assert not any(name == "router.core.config" for name in names)

