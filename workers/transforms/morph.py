"""Tag morphing: apply the actions of router/core/morph_spec.py to a dataset, or to a Part 10 file.

Values are handled as text, one string per value: a value with VM > 1 is changed value by value,
numbers (IS, DS, US, FD, ...) through their text, person names as written (Doe^John). Binary
elements (OB, OW, UN, ...) and AT can only be deleted. A missing element or sequence item is
left alone, except by set, set_if_empty and copy, which create the element, and a missing
sequence with one item, on their way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, assert_never

from pydicom import config, dcmread
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

from router.core.log_safety import without_values
from router.core.morph_spec import (
    CopyAction,
    DeleteAction,
    MapAction,
    MorphAction,
    PrefixAction,
    ReplaceAction,
    SetAction,
    SetIfEmptyAction,
    SuffixAction,
    TagPath,
    creation_vr,
    dictionary_vr,
    parse_tag_path,
    tag_name,
    values_of,
    vr_kind,
)
from router.core.patterns import MATCH_TIMEOUT, compile_pattern
from workers.transforms.charset_check import TEXT_VRS, charset_terms, describe, fits
from workers.transforms.dataset_checks import check_nesting, decode_text, readable
from workers.transforms.pixel_splice import PIXEL_TAGS, read_head, write_spliced

# A dataset a path leads to (the top level or a sequence item), and how to name it: "" or
# "RequestAttributesSequence[1]." -- concrete indexes, so [*] reports each item it changed.
Place = tuple[Dataset, str]
SPECIFIC_CHARACTER_SET = 0x00080005


class Change(str):
    """One change as route-test shows it, values and all; `warning` is what the log may say
    of it: the attribute and why its new value is not valid for its VR, without values."""

    warning: str = ""

    @classmethod
    def noted(cls, text: str, where: str, problem: str) -> Change:
        change = cls(f"{text}{problem and f' (warning: {problem})'}")
        change.warning = problem and f"{where}: {without_values(problem)}"
        return change


class MorphError(ValueError):
    """An action cannot be applied to this dataset; the message names the element."""


class MorphTooSlow(MorphError):
    """A `replace` pattern ran past its deadline on this instance's value: `index` is the
    action's place in the list, so that the caller can name the rule (or destination)."""

    def __init__(self, index: int, tag: str) -> None:
        super().__init__(f"replace on {tag}: pattern took too long on this instance's value")
        self.index = index


def needs_morph(actions: Sequence[MorphAction]) -> bool:
    return bool(actions)


def apply_morph(ds: Dataset, actions: Sequence[MorphAction]) -> list[str]:
    """Apply `actions` in order to `ds`, in place. Returns one line per element changed,
    e.g. "AccessionNumber: 'A1' -> 'RAD-A1'"; an action that changes nothing adds none."""
    changes: list[str] = []
    if any(_targets(action) == SPECIFIC_CHARACTER_SET for action in actions):
        decode_text(ds)  # every value re-encoded in the new character set, none misread
    for index, action in enumerate(actions):
        try:
            changes += _apply(ds, action)
        except TimeoutError:  # an OSError: caught here, or it reads as a disk failure
            raise MorphTooSlow(index, getattr(action, "tag", "")) from None
    return changes


def _targets(action: MorphAction) -> int:
    path = action.to if isinstance(action, CopyAction) else action.tag
    return parse_tag_path(path).tag


def morph_file(source: Path, target: Path, actions: Sequence[MorphAction]) -> list[str]:
    """Write `source` with `actions` applied to `target` in the same transfer syntax
    (encapsulated pixel data is copied as is). `source` is only read."""
    if target.resolve() == source.resolve():
        raise ValueError(f"morph_file would overwrite its source {source}")
    with readable(), source.open("rb") as fh:  # pydicom's failures: a morph dead letter
        # The pixel data stays on disk unless an action names it (pixel_splice.py).
        ds, tail = (dcmread(fh), None) if _names_pixels(actions) else read_head(fh)
        check_nesting(ds)
        changes = apply_morph(ds, actions)
        for meta_keyword, keyword in (("MediaStorageSOPClassUID", "SOPClassUID"),
                                      ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
            if ds.get(keyword) and ds.file_meta.get(meta_keyword) != ds[keyword].value:
                setattr(ds.file_meta, meta_keyword, ds[keyword].value)
        try:
            with target.open("wb") as out:
                write_spliced(ds, fh, tail, out)
        except BaseException:
            target.unlink(missing_ok=True)  # no half-written file where a whole one was
            raise
    return changes


def _names_pixels(actions: Sequence[MorphAction]) -> bool:
    """Whether an action reads or changes a pixel data element (at the top level)."""
    paths = [getattr(action, name) for action in actions for name in ("tag", "to")
             if isinstance(getattr(action, name, None), str)]
    tops = {(parsed.items[0][0] if parsed.items else parsed.tag)
            for parsed in map(parse_tag_path, paths)}
    return not tops.isdisjoint(PIXEL_TAGS)


def _apply(ds: Dataset, action: MorphAction) -> list[str]:
    match action:
        case SetAction() | SetIfEmptyAction():
            values = values_of(action.value)
            vr = creation_vr(action.tag, action.vr, values)
            return _put(ds, action.tag, values, vr, isinstance(action, SetIfEmptyAction))
        case DeleteAction():
            return _delete(ds, parse_tag_path(action.tag))
        case CopyAction():
            return _copy(ds, action.from_, action.to)
        case ReplaceAction():
            pattern, replacement = _compiled(action.pattern), action.replacement
            return _transform(ds, action.tag,
                              lambda v: pattern.sub(replacement, v, timeout=MATCH_TIMEOUT))
        case PrefixAction():
            prefix = action.value
            return _transform(ds, action.tag, lambda v: prefix + v)
        case SuffixAction():
            suffix = action.value
            return _transform(ds, action.tag, lambda v: v + suffix)
        case MapAction():
            table, default = action.table, action.default
            return _transform(ds, action.tag,
                              lambda v: table.get(v, v if default is None else default))
        case _:
            assert_never(action)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    """The `regex` pattern, for its deadline: `re` has none, and a pattern that backtracks
    catastrophically (`(a+)+$` on 40 a's and a b) held a delivery thread for minutes. It is
    imported here, so a config without `replace` never loads it."""
    return compile_pattern(pattern)


def _places(ds: Dataset, path: TagPath, create: bool) -> list[Place]:
    places: list[Place] = [(ds, "")]
    for seq_tag, index in path.items:
        found: list[Place] = []
        for parent, label in places:
            items = _items(parent, seq_tag, label, create and index in (None, 0))
            chosen = range(len(items)) if index is None else range(index, index + 1)
            found += [(items[i], f"{label}{tag_name(seq_tag)}[{i}].")
                      for i in chosen if i < len(items)]
        places = found
    return places


def _items(parent: Dataset, tag: int, label: str, create: bool) -> list[Dataset]:
    """The items of a sequence; with `create`, a missing or empty one gets one empty item."""
    if tag not in parent:
        if not create:
            return []
        parent.add(DataElement(tag, "SQ", []))
    elem = parent[tag]
    if elem.VR != "SQ":
        raise MorphError(f"{label}{tag_name(tag)} is not a sequence (VR {elem.VR})")
    if create and not elem.value:
        elem.value.append(Dataset())
    return list(elem.value)


def _strings(elem: DataElement, where: str) -> list[str]:
    """The element's values as text; MorphError for sequences and binary values."""
    if vr_kind(elem.VR) in ("sequence", "opaque"):
        raise MorphError(f"{where} has VR {elem.VR}: it can only be deleted, not changed")
    if elem.VM == 0:
        return []
    value = elem.value
    return [str(v) for v in (value if isinstance(value, MultiValue | list) else [value])]


def _write(root: Dataset, parent: Dataset, tag: int, vr: str, values: list[str], where: str,
           shown: bool = False, carried: str = "") -> str:
    """Give the element `values`; returns "" or why they are not valid for the VR.
    `shown`: the values are the config's (set), not the dataset's, so errors may quote them.
    `carried`: text read from the dataset (the old values, a copy's source)."""
    kind = vr_kind(vr)
    if kind in ("sequence", "opaque"):
        raise MorphError(f"{where} has VR {vr}: it can only be deleted, not changed")
    terms = charset_terms(root, parent)
    if vr in TEXT_VRS and not all(fits(v, terms, carried) for v in values):
        # pydicom would write '?' for them, and the destination would answer Success.
        raise MorphError(f"{where}: its new value has characters that the dataset's Specific "
                         f"Character Set ({describe(terms)}) cannot encode; set "
                         f"SpecificCharacterSet (to ISO_IR 192, say) in the morph before it")
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 and element >= 0x1000 and (tag & 0xFFFF0000 | element >> 8) not in parent:
        # A private element is read through its block's Private Creator (PS3.5 7.8.1);
        # without one, a reader cannot tell whose it is (it reads back as UN).
        raise MorphError(f"{where} is a private element without its Private Creator "
                         f"({group:04X},{element >> 8:04X}): set that first, with vr LO")
    typed = [_typed(kind, v, vr, where, shown) for v in values]
    note = ""
    for value in typed:
        try:
            validate_value(vr, value, config.RAISE)
        except ValueError as exc:
            note = str(exc).rstrip(".")
    value = typed[0] if len(typed) == 1 else typed or empty_value_for_VR(vr)
    # Validated above, reported rather than warned about: the route tester shows the note.
    parent[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    return note


def _typed(kind: str, text: str, vr: str, where: str, shown: bool) -> Any:
    try:
        return int(text) if kind == "int" else float(text) if kind == "float" else text
    except ValueError:
        value = repr(text) if shown else "its new value (from the dataset, not logged)"
        raise MorphError(f"{where} has VR {vr}: {value} is not a number") from None


def _show(values: list[str]) -> str:
    return repr(values[0]) if len(values) == 1 else repr(values) if values else "''"


def _put(ds: Dataset, text: str, values: list[str], vr: str, only_if_empty: bool = False,
         note: str = "", carried: str = "") -> list[str]:
    """set, set_if_empty and copy: `vr` is the VR of an element that has to be created;
    `carried`, a copy's source text."""
    path = parse_tag_path(text)
    changes: list[str] = []
    for parent, label in _places(ds, path, create=True):
        where = label + tag_name(path.tag)
        if path.tag not in parent:
            problem = _write(ds, parent, path.tag, vr, values, where, not note, carried)
            changes.append(Change.noted(f"{where}: added {_show(values)}{note}", where,
                                        problem))
            continue
        elem = parent[path.tag]
        if only_if_empty and not elem.is_empty:
            continue
        old = _strings(elem, where)
        if old != values:
            problem = _write(ds, parent, path.tag, elem.VR, values, where, not note,
                             carried + "".join(old))
            changes.append(Change.noted(f"{where}: {_show(old)} -> {_show(values)}{note}",
                                        where, problem))
    return changes


def _transform(ds: Dataset, text: str, change: Callable[[str], str]) -> list[str]:
    """replace, prefix, suffix and map: `change` each value of each element there is."""
    path = parse_tag_path(text)
    changes: list[str] = []
    for parent, label in _places(ds, path, create=False):
        if path.tag not in parent:
            continue
        where, elem = label + tag_name(path.tag), parent[path.tag]
        old = _strings(elem, where)
        new = [change(v) for v in old]
        if new != old:
            problem = _write(ds, parent, path.tag, elem.VR, new, where, carried="".join(old))
            changes.append(Change.noted(f"{where}: {_show(old)} -> {_show(new)}", where,
                                        problem))
    return changes


def _delete(ds: Dataset, path: TagPath) -> list[str]:
    changes = []
    for parent, label in _places(ds, path, create=False):
        if path.tag in parent:
            elem = parent[path.tag]
            changes.append(f"{label}{tag_name(path.tag)}: deleted (was {_describe(elem)})")
            del parent[path.tag]
    return changes


def _describe(elem: DataElement) -> str:
    kind = vr_kind(elem.VR)
    if kind == "sequence":
        return f"a sequence of {len(elem.value)} items"
    if kind == "opaque":
        size = len(elem.value) if isinstance(elem.value, bytes) else elem.VM
        return f"{size} {'bytes' if isinstance(elem.value, bytes) else 'values'} of VR {elem.VR}"
    return _show(_strings(elem, ""))


def _copy(ds: Dataset, source_text: str, target_text: str) -> list[str]:
    """The first `source` element found gives its value to every `target`; none, no change."""
    source = parse_tag_path(source_text)
    for parent, label in _places(ds, source, create=False):
        if source.tag in parent:
            where, elem = label + tag_name(source.tag), parent[source.tag]
            values = _strings(elem, where)
            known = dictionary_vr(parse_tag_path(target_text).tag)
            options = known.split(" or ") if known else [elem.VR]
            vr = elem.VR if elem.VR in options else options[0]
            return _put(ds, target_text, values, vr, note=f" (copied from {where})",
                        carried="".join(values))
    return []
