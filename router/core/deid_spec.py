"""The config of the de-identification action: DICOM PS3.15 Annex E, Basic Profile and Options.

Its own frozen, extra="forbid" base: router.config imports this module, so it cannot import
router.config. pydicom is imported only to check keywords in `keep`, inside the validator (the
supervisor and broker load this module and need pydicom for nothing else).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from router.core.uids import is_valid_uid

# A new UID is uid_root + "." + digits, at most 64 characters: a root of at most 43 leaves at
# least 20 digits (about 66 bits) for the keyed hash.
MAX_UID_ROOT = 43
# "(0010,0010)", "0010,0010", "00100010" or "0x00100010".
_TAG = re.compile(r"\(?(?:0x)?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_tag(text: str) -> int | None:
    """The tag written as "(gggg,eeee)", "gggg,eeee", "ggggeeee" or "0xggggeeee", else None."""
    match = _TAG.fullmatch(text.strip())
    return None if match is None else int(match[1] + match[2], 16)


class DeidentifyConfig(_Strict):
    """What the de-identification keeps; everything else follows PS3.15 Table E.1-1."""

    profile: Literal["basic"] = "basic"
    # Retain UIDs Option: UIDs are kept instead of being replaced.
    retain_uids: bool = False
    # Retain Longitudinal Temporal Information with Full Dates Option: dates and times kept.
    retain_dates: bool = False
    # Retain Device Identity Option: serial numbers, station names, device UIDs...
    retain_device_identity: bool = False
    # Retain Patient Characteristics Option: age, sex, size, weight, ethnic group...
    retain_patient_characteristics: bool = False
    # Clean Descriptors Option: descriptions (Study Description...) are kept, with this
    # patient's known identifiers cut out of them; if False they are removed.
    clean_descriptions: bool = False
    # Root of the replacement UIDs: "2.25" (UUID-derived, the default) or an organisation's.
    uid_root: str = "2.25"
    # The patient's new ID and name; by default a pseudonym derived from the original ID with
    # the secret key, so one patient stays one pseudonymous patient across studies.
    patient_id: str | None = Field(None, min_length=1, max_length=64)
    patient_name: str | None = Field(None, min_length=1, max_length=64)
    # Keywords (PatientSex) or tags ("(0010,0040)") kept whatever the profile says.
    keep: list[str] = []
    # Private attributes (odd groups) are removed, as the profile requires, or kept as is.
    private_tags: Literal["remove", "keep"] = "remove"
    # BurnedInAnnotation (0028,0301) YES: text in the pixels (often the patient's name) that
    # no attribute-level profile removes (PS3.15 E.1-1). "refuse": the instance is a
    # `deidentify` dead letter for this destination; "send": it goes, pixels as they are.
    # RecognizableVisualFeatures (0028,0302) YES (a face, a 3D rendering) goes the same way.
    burned_in_annotation: Literal["refuse", "send"] = "refuse"
    # What the pseudonym is derived from: PatientID alone, as always (existing pseudonyms
    # stay), or IssuerOfPatientID with it, for a destination fed by several issuing systems
    # whose IDs may collide (one ID from two of them is otherwise one patient). Switching
    # gives patients with an issuer new pseudonyms from then on, queued instances included.
    pseudonym_key: Literal["patient_id", "issuer_and_patient_id"] = "patient_id"

    @field_validator("uid_root", mode="before")
    @classmethod
    def _uid_root_is_text(cls, value: object) -> object:
        if isinstance(value, int | float):
            raise ValueError(f"quote it (uid_root: \"{value}\"): unquoted, YAML reads a number")
        return value

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, value: str) -> str:
        if not is_valid_uid(value) or len(value) > MAX_UID_ROOT:
            raise ValueError(
                f"{value!r} is not a UID root: digits and dots, no leading zeros, at most "
                f"{MAX_UID_ROOT} characters (e.g. 2.25)"
            )
        return value

    @field_validator("patient_id", "patient_name")
    @classmethod
    def _text_value(cls, value: str | None) -> str | None:
        if value is not None and ("\\" in value or any(ord(c) < 32 for c in value)):
            raise ValueError(f"{value!r}: no backslash or control characters")
        if value is not None and not value.isascii():
            # It goes into datasets of every character set, and into those without one.
            raise ValueError(f"{value!r}: ASCII only (it is written into datasets whatever "
                             f"their Specific Character Set)")
        return value

    @field_validator("keep")
    @classmethod
    def _known_attributes(cls, keep: list[str]) -> list[str]:
        for entry in keep:
            if parse_tag(entry) is not None:
                continue
            # Here, not at the top: see router.config's RuleMatch._known_keywords.
            from pydicom.datadict import tag_for_keyword

            if tag_for_keyword(entry) is None:
                raise ValueError(
                    f"keep: {entry!r} is neither a DICOM keyword (PatientSex) nor a tag "
                    "((0010,0040))"
                )
        return keep
