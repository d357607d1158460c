"""The written forms of an audit message: the A.5.1 XML, and one JSON line."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from router.audit.messages import AuditMessage

_TEXT_ELEMENTS = frozenset({
    "EventOutcomeDescription", "ParticipantObjectName", "ParticipantObjectQuery",
    "Encrypted", "Anonymized",
})


# Characters XML 1.0 cannot carry even as references (C0 controls but tab, LF and CR;
# surrogates; U+FFFE, U+FFFF): ElementTree would write them and break the document.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_value(value: object) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return _NOT_XML.sub(" ", text)


def _xml_fill(element: ET.Element, content: Mapping[str, Any]) -> None:
    for name, value in content.items():
        if isinstance(value, list):
            for item in value:
                _xml_fill(ET.SubElement(element, name), item)
        elif isinstance(value, Mapping):
            _xml_fill(ET.SubElement(element, name), value)
        elif name in _TEXT_ELEMENTS:
            ET.SubElement(element, name).text = _xml_value(value)
        else:
            element.set(name, _xml_value(value))


def to_xml(message: AuditMessage) -> str:
    """The A.5.1 XML form (ASCII, non-ASCII as character references)."""
    root = ET.Element("AuditMessage")
    _xml_fill(root, message["AuditMessage"])
    data: bytes = ET.tostring(root, encoding="us-ascii", xml_declaration=False)
    return data.decode("ascii")


def to_json_line(message: AuditMessage) -> str:
    """One line of the JSON lines file (ASCII: no character can break the line or a parser)."""
    return json.dumps(message, ensure_ascii=True, separators=(",", ":"))
