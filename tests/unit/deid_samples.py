"""The de-identification tests' sample instance and what PS3.15 Table E.1-1 expects of it."""

from __future__ import annotations

import re

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage

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
