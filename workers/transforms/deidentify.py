"""De-identification: the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

Every attribute of Table E.1-1 (workers.deid_table, 2026c edition, 655 rows) gets its Basic
Profile action unless an option the config switches on says K (keep) or C (clean); a keyword
or tag in `keep` is always kept. The actions, in and at every depth of sequences:

- X: removed. Z: zero length (a sequence: no items). U: a new UID from UidMap; UIDs of the
  DICOM root (1.2.840.10008.) name standard things, not instances, and are kept.
- D: a dummy value valid for the VR (see _DUMMY): PN "ANONYMOUS", DA "19000101", text
  "ANONYMIZED", numbers 0; a UI gets a new UID; a sequence becomes one empty item. Patient
  Name and Patient ID become the configured values, or else the patient's pseudonym.
- Combined codes take the choice that keeps every IOD valid, the last one: Z/D, X/D and X/Z/D
  are D, X/Z is Z (a sequence with X/Z/D is Z: an empty sequence). X/Z/U* keeps the sequence
  and its items go through the table (their instance UIDs are U rows).
- C: kept, with this patient's known identifiers (name parts, IDs, accession number, birth
  date, taken before anything changed) cut out of text values; a sequence's items go through
  the table. A description naming another person stays: switch the option on only for
  sources whose descriptions are otherwise clean.
- Overlay Description and Overlay Label (60xx,0022 and 60xx,1500), not in the table: X, or
  C under clean_descriptions (OVERLAY_TEXT).
- Attributes not in the table are kept, but for UIDs: a public UI attribute the table has
  no row for (SOPInstanceUIDOfConcatenationSource, MultiFrameSourceSOPInstanceUID,
  VolumeFrameOfReferenceUID, ...) gets new UIDs as U does, as TCIA's Posda does, unless it
  names a kind of thing rather than an instance (_NAMING_UIDS, *ClassUID, transfer
  syntaxes), or retain_uids or `keep` says so. URLs of the original instances (RetrieveURL,
  ...: LOCATION_URLS) hold their UIDs: X, K under retain_uids. Private attributes (odd
  groups) are removed unless private_tags is "keep". Group lengths (gggg,0000) are removed:
  they would be wrong.

Burned-in text in the pixels: workers.transforms.burned_in_pixels.

The file meta follows (Media Storage SOP Instance UID); its AE titles and source address name
the sending device and go unless retain_device_identity. The result says so: Patient Identity
Removed YES, De-identification Method and its code sequence (CID 7050), Longitudinal Temporal
Information Modified.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from router.core.deid_spec import DeidentifyConfig
from workers.transforms.burned_in_pixels import BurnedInNote, burned_in
from workers.transforms.charset_check import TEXT_VRS
from workers.transforms.dataset_checks import (
    check_identity,
    check_nesting,
    check_string,
    element_vr,
    readable,
)
from workers.transforms.deid_actions import concrete, keep_tags, row_for, table_code
from workers.transforms.pixel_splice import read_head, write_spliced
from workers.transforms.uid_map import UidMap

DICOM_ROOT = "1.2.840.10008."
PROFILE = ("113100", "Basic Application Confidentiality Profile")
# CID 7050 codes of the options, by the config field that switches each on.
OPTION_CODES = {
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "clean_descriptions": ("113105", "Clean Descriptors Option"),
}
_TEXT_VRS = {"AE", "CS", "SH", "LO", "ST", "LT", "UT", "UC", "UR"}
_NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT", "US or SS"}
_BYTES_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "OB or OW"}
_DUMMY = {"PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000",
          "AS": "000Y", "DS": "0", "IS": "0"}
_PATIENT_NAME, _PATIENT_ID = 0x00100010, 0x00100020
# Whose values C cuts out of descriptions.
_IDENTIFYING = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate")
# UI attributes outside Table E.1-1 that name kinds of things (coding schemes, context
# groups, registries, software), not instances: kept. Any other one is an instance's UID.
_NAMING_UIDS = frozenset({
    "CodingSchemeUID", "ContextUID", "ContextGroupExtensionCreatorUID", "MappingResourceUID",
    "PrivateInformationCreatorUID", "CreatorVersionUID", "HomeCommunityID",
    "RepositoryUniqueID", "RetrieveLocationUID"})
_NAMING_PARTS = ("ClassUID", "SOPClasses", "TransferSyntaxUID")
_FILE_META_DEVICE = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                     "ReceivingApplicationEntityTitle", "SourcePresentationAddress")


# --- Applying it --------------------------------------------------------------------------


@dataclass
class _Run:
    config: DeidentifyConfig
    uids: UidMap
    keep: frozenset[int]
    patient_id: str
    patient_name: str
    identifiers: re.Pattern[str] | None
    changed: dict[str, None] = field(default_factory=dict)  # an ordered set


def deidentify(ds: Dataset, config: DeidentifyConfig, uids: UidMap,
               notes: list[BurnedInNote] | None = None) -> list[str]:
    """De-identify `ds` in place; return what was removed or replaced: keywords (a nested one
    as Sequence>Keyword, an unnamed one as its tag), never values. `notes` gets the
    burned-in text it may still carry."""
    check_identity(ds)  # a dataset misread (or not the instance sent) is never sent on
    check_nesting(ds)
    note = burned_in(ds, config)
    if note is not None and notes is not None:
        notes.append(note)
    pseudonym = "" if config.patient_id and config.patient_name \
        else uids.pseudonym(_pseudonym_source(ds, config))
    run = _Run(config, uids, keep_tags(config), config.patient_id or pseudonym,
               config.patient_name or pseudonym, _identifier_pattern(ds))
    _walk(ds, run, "")
    _mark(ds, config)
    _follow_in_file_meta(ds, run)
    return list(run.changed)


def _pseudonym_source(ds: Dataset, config: DeidentifyConfig) -> str:
    """Whose pseudonym: the patient's; failing an ID, the study's (or the instance's) own.
    The ID alone by default: keying on the issuer too gave every patient with one a second
    pseudonym from the upgrade on, splitting studies in progress. pseudonym_key
    issuer_and_patient_id keys "issuer\\id" (a backslash is in no single ID, so no plain ID
    has its key): one ID from two issuers is then two patients."""
    source = next((str(ds.get(k)) for k in ("PatientID", "StudyInstanceUID", "SOPInstanceUID")
                   if ds.get(k)), "")
    issuer = str(ds.get("IssuerOfPatientID") or "")
    if config.pseudonym_key == "issuer_and_patient_id" and issuer and ds.get("PatientID"):
        return f"{issuer}\\{source}"
    return source


def _walk(ds: Dataset, run: _Run, path: str) -> None:
    for tag in list(ds.keys()):
        name = path + (keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if _kept_text(ds, tag, run):
            # Left as read: decoded, a value its character set cannot decode (a Latin-1
            # byte in an ISO_IR 192 dataset) would be written back with U+FFFD instead.
            check_string(ds.get_item(tag), name)
            continue
        elem = ds[tag]
        keyword = elem.keyword or keyword_for_tag(tag)  # the latter knows 50xx, 60xx
        private = elem.tag.is_private and tag not in run.keep
        if elem.tag.element == 0 or (private and run.config.private_tags == "remove"):
            del ds[elem.tag]
            run.changed[name] = None
            continue
        row = None if tag in run.keep or elem.tag.is_private else row_for(tag)
        if row is not None:
            action = concrete(table_code(row, run.config), elem.VR)
        elif elem.VR == "UI" and _instance_uid(keyword, elem, run):
            action = "U"  # an instance's UID the table has no row for: it would link back
        elif keyword or elem.tag.is_private or tag in run.keep:
            action = "K"  # a public attribute the table leaves alone, or kept by the config
        else:
            # No public attribute of the standard this dictionary knows: what it holds
            # cannot be judged (a misread dataset arrives as one such element), so it goes.
            action = "X"
        _apply(ds, elem, action, run, name)


def _kept_text(ds: Dataset, tag: int, run: _Run) -> bool:
    """Whether the element is text (its value under (0008,0005)) that _walk would keep
    as it is (K), judged without decoding it."""
    vr = element_vr(ds.get_item(tag))
    if vr not in TEXT_VRS or tag & 0xFFFF == 0:
        return False
    private = bool(tag >> 16 & 1)
    if private:
        return tag in run.keep or run.config.private_tags != "remove"
    row = None if tag in run.keep else row_for(tag)
    if row is not None:
        return concrete(table_code(row, run.config), vr) == "K"
    return bool(keyword_for_tag(tag)) or tag in run.keep


def _instance_uid(keyword: str, elem: DataElement, run: _Run) -> bool:
    """A public UI attribute outside the table whose value identifies an instance (mapped as
    U: the same original gives the same new UID as the table's rows give it)."""
    return bool(keyword) and not elem.tag.is_private and int(elem.tag) not in run.keep \
        and not run.config.retain_uids and keyword not in _NAMING_UIDS \
        and not any(part in keyword for part in _NAMING_PARTS)


def _walk_items(elem: DataElement, run: _Run, name: str) -> None:
    if elem.VR == "SQ":
        for item in elem.value:
            _walk(item, run, name + ">")


def _apply(ds: Dataset, elem: DataElement, action: str, run: _Run, name: str) -> None:
    if action in ("K", "U*", "C"):
        check_string(elem, name)  # what it keeps must be what the element holds
        _walk_items(elem, run, name)
        changed = action == "C" and _clean(elem, run.identifiers)
    elif action == "X":
        del ds[elem.tag]
        changed = True
    else:
        before = elem.value
        elem.value = _replacement(elem, action, run)
        changed = elem.value != before
    if changed:
        run.changed[name] = None


def _replacement(elem: DataElement, action: str, run: _Run) -> Any:
    """The new value for Z, D or U."""
    if elem.tag == _PATIENT_NAME:
        return run.patient_name
    if elem.tag == _PATIENT_ID:
        return run.patient_id
    if action == "Z" or elem.VM == 0:
        return elem.empty_value
    if elem.VR == "UI":  # U, or D of a UID
        new = [v if v.startswith(DICOM_ROOT) else run.uids.new_uid(v, run.config.uid_root)
               for v in _strings(elem.value)]
        return new if len(new) > 1 else new[0]
    if action == "U":  # read without its VR (UN): no UID to map
        return elem.empty_value
    return _dummy(elem.VR)


def _dummy(vr: str) -> Any:
    if vr == "SQ":
        return Sequence([Dataset()])
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr in _TEXT_VRS:
        return "ANONYMIZED"
    if vr in _NUMBER_VRS:
        return 0
    return bytes(8) if vr in _BYTES_VRS else None  # UN: zero length


def _identifier_pattern(ds: Dataset) -> re.Pattern[str] | None:
    values = [v for keyword in _IDENTIFYING for v in _strings(ds.get(keyword))]
    words = {w for v in values for w in [v, *re.split(r"[\s^=,.\-/]+", v)] if len(w) >= 3}
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)


def _clean(elem: DataElement, identifiers: re.Pattern[str] | None) -> bool:
    """Cut the patient's identifiers out of a text value; whether anything changed."""
    if identifiers is None or elem.VR not in _TEXT_VRS | {"PN"} or elem.VM == 0:
        return False
    values = _strings(elem.value)
    cleaned = [identifiers.sub("***", v) for v in values]
    if cleaned == values:
        return False
    elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
    return True


def _mark(ds: Dataset, config: DeidentifyConfig) -> None:
    """Say what was done (PS3.3 C.7.1.1, CID 7050), after what an earlier pass said."""
    codes = [PROFILE] + [code for name, code in OPTION_CODES.items() if getattr(config, name)]
    methods = _strings(ds.get("DeidentificationMethod")) + [meaning for _, meaning in codes]
    if config.private_tags == "keep":
        methods.append("Private attributes retained")
    if config.keep:
        methods.append("Some attributes retained by configuration")
    sequence = list(ds.get("DeidentificationMethodCodeSequence") or [])
    present = {str(item.get("CodeValue")) for item in sequence}
    for value, meaning in codes:
        if value not in present:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            sequence.append(item)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = methods
    ds.DeidentificationMethodCodeSequence = sequence
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED" if config.retain_dates \
        else "REMOVED"


def _strings(value: Any) -> list[str]:
    """An element's values as text: none, one or several (MultiValue)."""
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]


def _follow_in_file_meta(ds: Dataset, run: _Run) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    if "SOPInstanceUID" in ds and meta.get("MediaStorageSOPInstanceUID") != ds.SOPInstanceUID:
        if meta.get("MediaStorageSOPInstanceUID"):
            run.changed["MediaStorageSOPInstanceUID"] = None
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds and not meta.get("MediaStorageSOPClassUID"):
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if not run.config.retain_device_identity:
        for keyword in _FILE_META_DEVICE:
            if keyword in meta:
                del meta[keyword]
                run.changed[keyword] = None


def deidentify_file(source: Path, target: Path, config: DeidentifyConfig,
                    uids: UidMap, notes: list[BurnedInNote] | None = None) -> list[str]:
    """Write a de-identified copy of `source` to `target` (same transfer syntax, a DICOM file
    with its meta); `source` is only read. `target` appears whole or not at all."""
    if target.resolve() == source.resolve():
        raise ValueError(f"{target}: the target is the source, which is never written")
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        with readable(), source.open("rb") as fh:
            ds, tail = read_head(fh)  # the pixel data stays on disk (pixel_splice.py)
            changed = deidentify(ds, config, uids, notes)
            with open(temporary, "xb") as out:
                write_spliced(ds, fh, tail, out)
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return changed
