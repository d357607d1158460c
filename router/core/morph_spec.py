"""Declarative tag morphing: the config models of its actions and the tag paths they name.

A tag is a keyword (PatientName), a hex tag ((0010,0010), 0010,0010 or 00100010) or a path
into sequences: RequestAttributesSequence[0].AccessionNumber names the element in the first
item, RequestAttributesSequence[*].AccessionNumber the one in every item. Everything is
checked at load time, so a config that loads only fails on a dataset that cannot take the
change (an element that turns out binary, a value that is no number).

pydicom is imported inside functions, not at the top: config.py imports this module, and the
supervisor must not pay for pydicom's dictionaries (see config.RuleMatch._known_keywords).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from router.core.patterns import compile_pattern

# What a VR's values are to morphing: text is changed as is, numbers through their text;
# binary values (and AT) can only be deleted, sequences only deleted or walked into.
TEXT_VRS = frozenset(["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                      "TM", "UC", "UI", "UR", "UT"])
INT_VRS = frozenset(["SL", "SS", "SV", "UL", "US", "UV"])
FLOAT_VRS = frozenset(["FD", "FL"])
OTHER_VRS = frozenset(["AT", "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UN"])
KNOWN_VRS = TEXT_VRS | INT_VRS | FLOAT_VRS | OTHER_VRS
VRKind = Literal["text", "int", "float", "sequence", "opaque"]

_FORMAT = "a DICOM keyword or (gggg,eeee) tag"
_HEX = re.compile(r"\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)|([0-9A-Fa-f]{4}),?"
                  r"([0-9A-Fa-f]{4})")
_STEP = re.compile(r"(?P<ref>[^\[\]]+?)\s*(?:\[\s*(?P<item>\d+|\*)\s*\])?")


def vr_kind(vr: str) -> VRKind:
    """How morphing treats a VR; an ambiguous one ("US or SS") only when all its options agree."""
    options = set(vr.split(" or "))
    if options <= TEXT_VRS:
        return "text"
    if options <= INT_VRS:
        return "int"
    if options <= FLOAT_VRS:
        return "float"
    return "sequence" if options == {"SQ"} else "opaque"


@dataclass(frozen=True)
class TagPath:
    """A parsed tag: the sequence items to walk into, then the element's tag."""

    items: tuple[tuple[int, int | None], ...]  # (sequence tag, item index; None: every item)
    tag: int


def tag_name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def dictionary_vr(tag: int) -> str | None:
    """The VR the DICOM dictionary gives (may be "US or SS"); None for private/unknown tags."""
    from pydicom.datadict import dictionary_VR

    if (tag >> 16) & 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF:
        return "LO"  # a private creator
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _parse_ref(ref: str, text: str) -> int:
    hex_tag = _HEX.fullmatch(ref)
    if hex_tag:
        group, element = (g for g in hex_tag.groups() if g is not None)
        return int(group, 16) << 16 | int(element, 16)
    from pydicom.datadict import keyword_dict

    tag = keyword_dict.get(ref)
    if tag is not None:
        return tag
    where = f"tag {ref!r}" if ref == text else f"tag {text!r}: {ref!r}"
    close = difflib.get_close_matches(ref, keyword_dict, n=1)
    hint = f" (did you mean {close[0]}?)" if close else " (e.g. AccessionNumber, (0008,0050))"
    raise ValueError(f"{where} is not {_FORMAT}{hint}")


@lru_cache(maxsize=1024)
def parse_tag_path(text: str) -> TagPath:
    """Parse and check a tag or sequence path; ValueError says what is wrong with it."""
    steps: list[tuple[int, int | None]] = []
    parts = text.strip().split(".")
    for n, part in enumerate(parts):
        step = _STEP.fullmatch(part.strip())
        if step is None:
            raise ValueError(f"tag {text!r}: {part!r} is not {_FORMAT}, optionally with [n] or [*]")
        tag, item = _parse_ref(step["ref"], text), step["item"]
        last = n == len(parts) - 1
        if last and item is not None:
            raise ValueError(f"tag {text!r} ends with an item index: name an element in the item, "
                             f"e.g. {part}.AccessionNumber")
        if not last:
            if item is None:
                raise ValueError(f"tag {text!r}: sequence {step['ref']} needs an item index, "
                                 "[0] for the first item or [*] for every item")
            vr = dictionary_vr(tag)
            if vr is not None and vr != "SQ":
                raise ValueError(f"tag {text!r}: {step['ref']} is not a sequence (VR {vr})")
            steps.append((tag, None if item == "*" else int(item)))
    return TagPath(tuple(steps), tag)


def _check_path(text: str) -> str:
    parse_tag_path(text)
    return text


TagText = Annotated[str, AfterValidator(_check_path)]
Value = str | list[str]


def values_of(value: Value) -> list[str]:
    """A configured value as the list of values it stands for; "" and [] are an empty value."""
    values = [value] if isinstance(value, str) else list(value)
    return [] if values == [""] else values


def _check_values(text: str, vr: str, values: list[str]) -> None:
    kind = vr_kind(vr)
    if kind in ("sequence", "opaque"):
        raise ValueError(f"tag {text!r} has VR {vr}: it can only be deleted")
    for value in values if kind != "text" else []:
        try:
            int(value) if kind == "int" else float(value)
        except ValueError:
            raise ValueError(f"tag {text!r} has VR {vr}: {value!r} is not a number") from None


def _check_changeable(text: str) -> str:
    """Text-changing actions: refuse a tag the dictionary says is binary or a sequence."""
    vr = dictionary_vr(parse_tag_path(text).tag)
    if vr is not None:
        _check_values(text, vr, [])
    return text


class _Strict(BaseModel):
    # Numbers in YAML (value: 1, table keys 2024) are taken as the text they read as.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


ChangeableTag = Annotated[TagText, AfterValidator(_check_changeable)]


class _SetBase(_Strict):
    tag: TagText
    value: Value
    # Only for a tag the dictionary has no (or an ambiguous) VR for: private tags.
    vr: str | None = None

    @model_validator(mode="after")
    def _creatable(self) -> _SetBase:
        creation_vr(self.tag, self.vr, values_of(self.value))
        return self


def creation_vr(text: str, vr: str | None, values: list[str]) -> str:
    """The VR a new element at `text` gets: `vr`, checked against the dictionary, or the
    dictionary's own. ValueError when neither gives one VR that can hold `values`."""
    known = dictionary_vr(parse_tag_path(text).tag)
    if vr is None:
        if known is None:
            raise ValueError(f"tag {text!r} is private or not in the DICOM dictionary: "
                             "give its vr (e.g. vr: LO)")
        if " or " in known:
            _check_values(text, known, values)  # binary options: "can only be deleted" first
            raise ValueError(f"tag {text!r} has VR {known}: give vr, one of them")
        vr = known
    elif vr not in KNOWN_VRS:
        raise ValueError(f"tag {text!r}: {vr!r} is not a DICOM VR (e.g. LO, SH, CS, DS)")
    elif known is not None and vr not in known.split(" or "):
        raise ValueError(f"tag {text!r} has VR {known} in the DICOM dictionary, not {vr}")
    _check_values(text, vr, values)
    return vr


class SetAction(_SetBase):
    """Give the element this value, creating it (and a missing sequence) when absent."""

    action: Literal["set"]


class SetIfEmptyAction(_SetBase):
    """Like set, but only when the element is absent or empty."""

    action: Literal["set_if_empty"]


class DeleteAction(_Strict):
    action: Literal["delete"]
    tag: TagText


class CopyAction(_Strict):
    """Give `to` the value of `from` (its first match); nothing when `from` is absent."""

    model_config = ConfigDict(populate_by_name=True)

    action: Literal["copy"]
    from_: ChangeableTag = Field(alias="from")
    to: ChangeableTag


class ReplaceAction(_Strict):
    """re.sub(pattern, replacement) on each value; replacement may use \\1 or \\g<name>.
    Run with `regex` and a deadline (workers/transforms/morph.py)."""

    action: Literal["replace"]
    tag: ChangeableTag
    pattern: str
    replacement: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            compile_pattern(pattern)
        except ValueError as exc:
            raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _groups_exist(self) -> ReplaceAction:
        try:  # the template is parsed before any matching, so this checks \3, \g<name>
            re.compile(self.pattern).sub(self.replacement, "")
        except (re.error, IndexError) as exc:
            raise ValueError(f"replacement {self.replacement!r}: {exc}") from None
        return self


class PrefixAction(_Strict):
    """Put `value` before each non-empty value (e.g. accession numbers from another site)."""

    action: Literal["prefix"]
    tag: ChangeableTag
    value: str = Field(min_length=1)


class SuffixAction(_Strict):
    action: Literal["suffix"]
    tag: ChangeableTag
    value: str = Field(min_length=1)


class MapAction(_Strict):
    """Each value found in `table` becomes its entry; others become `default`, when given."""

    action: Literal["map"]
    tag: ChangeableTag
    table: dict[str, str]
    default: str | None = None


MorphAction = Annotated[
    SetAction | SetIfEmptyAction | DeleteAction | CopyAction | ReplaceAction | PrefixAction
    | SuffixAction | MapAction,
    Field(discriminator="action"),
]
