"""Which action PS3.15 Table E.1-1 gives each attribute under a `deidentify:` config (X
removed, Z emptied, D dummy, U new UID, C cleaned, K kept, U* a sequence kept with new UIDs
inside): the table's lookups, without a dataset. Applied by deidentify.py; leaking_copies
serves the delivery's, route-test's and check-config's check of morph copies (prepare.py)."""

from __future__ import annotations

from collections.abc import Sequence as Actions

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from router.core.deid_spec import DeidentifyConfig, parse_tag
from router.core.morph_spec import CopyAction, MorphAction, parse_tag_path
from workers.transforms.deid_table import TABLE_E1_1, Row

# Table columns 3..7, in order.
_OPTION_COLUMNS = ("retain_uids", "retain_device_identity", "retain_patient_characteristics",
                   "retain_dates", "clean_descriptions")
# URLs of the original instances that Table E.1-1 does not list: they hold the original
# study, series and instance UIDs (and the archive's host), which the profile replaces so
# that nothing matches the originals (PS3.15 E.2); they went out as they were. Removed, or
# kept with Retain UIDs as the UIDs they hold are.
LOCATION_URLS: tuple[Row, ...] = (
    ("00080407", "StoredInstanceBaseURI", "X", "K", "", "", "", ""),
    ("00080408", "FolderAccessURI", "X", "K", "", "", "", ""),
    ("00080409", "FileAccessURI", "X", "K", "", "", "", ""),
    ("00081190", "RetrieveURL", "X", "K", "", "", "", ""),
    ("00287FE0", "PixelDataProviderURL", "X", "K", "", "", "", ""),
    ("00404073", "StorageURL", "X", "K", "", "", "", ""),
    ("0040E010", "RetrieveURI", "X", "K", "", "", "", ""),
)
_EXACT: dict[int, Row] = {int(row[0], 16): row for row in (*TABLE_E1_1, *LOCATION_URLS)
                          if "X" not in row[0]}
_CURVE = next(row for row in TABLE_E1_1 if row[0] == "50XXXXXX")
# Overlay text Table E.1-1 does not list (it has the overlay's data and comments): typed at
# the modality, it can name the patient, so it goes as the comments do, or is cleaned under
# clean_descriptions. It was kept.
OVERLAY_TEXT: tuple[Row, ...] = (
    ("60XX0022", "OverlayDescription", "X", "", "", "", "", "C"),
    ("60XX1500", "OverlayLabel", "X", "", "", "", "", "C"),
)
_OVERLAY = {int(row[0][4:], 16): row for row in (*TABLE_E1_1, *OVERLAY_TEXT)
            if row[0].startswith("60XX")}


def row_for(tag: int) -> Row | None:
    row = _EXACT.get(tag)
    if row is None and (tag >> 16) & 0xFF01 == 0x5000:
        return _CURVE
    if row is None and (tag >> 16) & 0xFF01 == 0x6000:
        return _OVERLAY.get(tag & 0xFFFF)
    return row


def table_code(row: Row, config: DeidentifyConfig) -> str:
    """The row's code under the options switched on: K beats C beats the Basic Profile."""
    codes = {code for name, code in zip(_OPTION_COLUMNS, row[3:], strict=True)
             if code and getattr(config, name)}
    return "K" if "K" in codes else "C" if "C" in codes else row[2]


def concrete(code: str, vr: str) -> str:
    """One action of X, Z, D, U, C, K, or U* (keep the sequence, its items go through)."""
    if code == "X/Z/U*":
        return "U*"
    choices = code.split("/")
    return "Z" if vr == "SQ" and "Z" in choices else choices[-1]


def keep_tags(config: DeidentifyConfig) -> frozenset[int]:
    tags = (parse_tag(entry) or tag_for_keyword(entry) for entry in config.keep)
    return frozenset(tag for tag in tags if tag is not None)


def removed_attributes(config: DeidentifyConfig) -> list[tuple[str, str]]:
    """(keyword, action) of every attribute the config does not keep, in tag order: X
    removed, Z emptied, D dummy, U new UID, C cleaned, U* sequence kept with new UIDs inside."""
    keep = keep_tags(config)
    listed = []
    for row in (*TABLE_E1_1, *OVERLAY_TEXT, *LOCATION_URLS):
        if "X" not in row[0] and int(row[0], 16) in keep:
            continue
        action = concrete(table_code(row, config), _dictionary_vr(row[0]))
        if action != "K":
            listed.append((row[1], action))
    if config.private_tags == "remove":
        listed.append(("private attributes (odd groups)", "X"))
    return listed


def leaking_copies(morph: Actions[MorphAction], config: DeidentifyConfig) -> list[str]:
    """Morph copies from an attribute this profile removes or replaces into one it keeps:
    de-identification runs after the morphs, so the copy would go out as it is (PatientName
    into BodyPartExamined went out identified beside PatientIdentityRemoved YES)."""
    removed = {keyword for keyword, _ in removed_attributes(config)}
    leaks = []
    for action in morph:
        if not isinstance(action, CopyAction):
            continue
        source = keyword_for_tag(parse_tag_path(action.from_).tag)
        target = keyword_for_tag(parse_tag_path(action.to).tag)
        if source in removed and target not in removed:
            leaks.append(f"a morph copies {source} into {target}, which de-identification "
                         f"keeps: it would go out identified")
    return leaks


def _dictionary_vr(tag: str) -> str:
    try:
        return dictionary_VR(int(tag, 16)) if "X" not in tag else ""
    except KeyError:
        return ""
