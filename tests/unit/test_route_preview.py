"""router/service/route_preview.py `explain` (route-test and the console's rule tester): its
prediction is the running router's decision and delivery, on the same file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.core.config import parse_config
from router.core.header_tags import read_tags
from router.core.rules import AssociationFacts, RuleSet
from router.service.route_preview import explain
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance

CT = "1.2.840.10008.5.1.4.1.1.2"
FACTS = AssociationFacts("CT1", "DICOM-ROUTER", "127.0.0.1")


def _config(tmp_path: Path, rules: list[dict[str, Any]]) -> Any:
    return parse_config({
        "destinations": {name: {"type": "folder", "path": str(tmp_path / name)}
                         for name in ("exact", "anchored", "other")},
        "rules": rules})


def _live(config: Any, path: Path) -> tuple[str, ...]:
    """The acceptor's decision: its rules over its own header reader."""
    rules = RuleSet(config.rules)
    return rules.route(FACTS, lambda: read_tags(path, rules.tag_keywords), CT).rules


@pytest.mark.parametrize("expected", ["ORIGINAL\\PRIMARY\\AXIAL", r"re:^ORIGINAL\\PRIMARY\\"])
def test_multi_valued_tags_match_as_live_routing_sees_them(tmp_path: Path,
                                                          expected: str) -> None:
    config = _config(tmp_path, [{"name": "axial", "match": {"tags": {"ImageType": expected}},
                                 "forward": ["exact"]}])
    path = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                          tags={"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]})
    assert _live(config, path) == ("axial",)
    lines = explain(config, path, "CT1", "DICOM-ROUTER", "127.0.0.1")
    assert "  rules matched: axial" in lines, lines


def test_a_morph_that_fails_is_a_predicted_dead_letter_and_the_rest_is_explained(
        tmp_path: Path) -> None:
    """A private tag set without its Private Creator: the worker makes a `morph` dead letter;
    route-test says so for that destination and goes on with the others."""
    config = _config(tmp_path, [
        {"name": "tag", "match": {}, "forward": ["exact"], "continue": True,
         "morph": [{"action": "set", "tag": "(0013,1010)", "value": "x", "vr": "LO"}]},
        {"name": "plain", "match": {}, "forward": ["other"]}])
    path = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE)
    lines = explain(config, path, "CT1", "DICOM-ROUTER", "127.0.0.1")
    text = "\n".join(lines)
    assert "  -> exact (folder)" in lines and "  -> other (folder)" in lines, text
    dead = [line for line in lines if "DEAD LETTER (morph)" in line]
    assert len(dead) == 1 and "morphing failed" in dead[0] and "(0013,1010)" in dead[0], text
    assert text.index("DEAD LETTER (morph)") < text.index("-> other"), text
