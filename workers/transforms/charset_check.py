"""Whether new text fits a dataset's Specific Character Set (0008,0005).

pydicom writes a character its dataset's character set cannot encode as '?' (a warning in
the log, Success at the destination): a morph that set "Šternberk" into an ISO_IR 100
dataset delivered "?ternberk". A morph checks its new values here first and refuses
instead, so the instance becomes a dead letter naming the attribute.
"""

from __future__ import annotations

from pydicom.charset import convert_encodings, custom_encoders
from pydicom.dataset import Dataset

# The VRs whose values (0008,0005) governs (PS3.5 6.1.2.3); the others are ASCII by VR.
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_CHARSET = 0x00080005
# pydicom's name for the default repertoire (no, an empty or an unknown term): it encodes it
# as Latin-1, but ISO-IR 6 is ASCII and a reader decodes it as such.
_DEFAULT = "iso8859"


def charset_terms(root: Dataset, item: Dataset) -> list[str]:
    """The Specific Character Set that applies in `item` (its own, else the dataset's:
    PS3.5 7.5.3), one term a value; [] when there is none."""
    for ds in (item, root):
        if _CHARSET in ds:
            value = ds[_CHARSET].value
            terms = [value] if isinstance(value, str | None) else list(value)
            return [str(term or "").strip() for term in terms]
    return []


def fits(text: str, terms: list[str], carried: str = "") -> bool:
    """Whether every character of `text` can be written under `terms`. Characters in
    `carried` (read from this dataset) pass: pydicom writes them back as it read them."""
    encodings = [e if e != _DEFAULT else "ascii" for e in convert_encodings(terms or None)]
    return all(ch in carried or _encodes(ch, encodings) for ch in set(text))


def _encodes(ch: str, encodings: list[str]) -> bool:
    for encoding in encodings:
        encode = custom_encoders.get(encoding)
        try:
            encode(ch, errors="strict") if encode else ch.encode(encoding)
        except (UnicodeError, LookupError):
            continue
        return True
    return False


def describe(terms: list[str]) -> str:
    return "\\".join(terms) if terms else "none: the default repertoire, ASCII"
