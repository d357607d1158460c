"""router/core/patterns.py: rule patterns matched with a deadline, and the shapes that need it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from router.cli.main import main
from router.core.config import Rule
from router.core.dimse_status import Status
from router.core.errors import PatternTooSlow
from router.core.patterns import nested_quantifiers
from router.core.rules import AssociationFacts, RuleSet

FACTS = AssociationFacts(calling_ae="CT1", called_ae="DICOM-ROUTER", source="10.1.2.3")


def rules(pattern: str) -> RuleSet:
    return RuleSet([
        Rule.model_validate({"name": "words", "match": {"tags": {"StudyDescription": pattern}},
                             "forward": ["a"]}),
        Rule.model_validate({"name": "rest", "forward": ["b"]}),
    ])


def test_a_pattern_past_its_deadline_refuses_the_instance_naming_the_rule() -> None:
    """Regression: a search ran unbounded in the acceptor's handler; "^(a|aa)+$" (or ".*"
    between words of a 64 KB value) held it for minutes. Not matching would misroute (to
    `rest`): the instance is refused instead."""
    for pattern, value in [("re:^(a|aa)+$", "a" * 60 + "b"),
                           (r"re:\bHEAD\b.*\bNECK\b", "HEAD " * 13000)]:
        with pytest.raises(PatternTooSlow) as raised:
            rules(pattern).route(FACTS, lambda v=value: {"StudyDescription": v})
        assert raised.value.status == Status.PATTERN_TOO_SLOW == 0xC006
        assert str(raised.value) == "rule words: pattern took too long on this instance's value"


def test_the_hunts_pattern_on_a_legal_description_routes_at_once() -> None:
    # 44 characters that made `re` backtrack for 95 s; `regex` settles it.
    value = "CT THORAX ABDOMEN PELVIS WITH CONTRAST 3MM!"
    decision = rules(r"re:^(\w+\s?)+$").route(FACTS, lambda: {"StudyDescription": value})
    assert decision.rules == ("rest",)


@pytest.mark.parametrize(("pattern", "value"), [
    (r"^CT", "CT HEAD"), (r"HEAD$", "CT HEAD"), (r"(?i)chest", "CT CHEST"),
    (r"^\d{3}-\w+", "123-abc"), (r"(?P<x>a)(?P=x)", "xaay"), (r"[^A-Z ]", "CT HEAD"),
    (r"\bNECK\b", "HEAD NECK"), (r"^$", ""), (r"a|b", "zzz"),
])
def test_patterns_keep_the_meaning_they_have_in_re(pattern: str, value: str) -> None:
    expected = ("words",) if re.search(pattern, value) else ("rest",)
    decision = rules("re:" + pattern).route(FACTS, lambda: {"StudyDescription": value})
    assert decision.rules == expected


def test_nested_quantifiers_are_named_and_plain_patterns_are_not() -> None:
    slow = Rule.model_validate({"name": "words", "forward": ["a"], "match": {
        "calling_ae": "re:^(CT[0-9]+)+$", "tags": {"StudyDescription": r"re:^(\w+\s?)+$",
                                                   "Modality": "re:^(CT|MR)$"}}})
    plain = Rule.model_validate({"name": "ct", "forward": ["a"], "match": {
        "tags": {"StudyDescription": r"re:^CT\s+(HEAD|NECK)+", "Modality": "CT"}}})

    notes = nested_quantifiers([slow, plain])

    assert [n.split(" repeats")[0] for n in notes] == [
        "rule 'words': match.calling_ae 're:^(CT[0-9]+)+$'",
        r"rule 'words': match.tags.StudyDescription 're:^(\\w+\\s?)+$'"]
    assert "cut at 50 ms and the instance refused" in notes[0]


def test_check_config_warns_of_nested_quantifiers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "spool": {"path": str(tmp_path / "spool")},
        "destinations": {"a": {"type": "folder", "path": str(tmp_path / "a")}},
        "rules": [{"name": "words", "match": {"tags": {"StudyDescription": r"re:^(\w+\s?)+$"}},
                   "forward": ["a"]}]}))
    assert main(["check-config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "dicom-router check-config: warning: rule 'words': match.tags.StudyDescription" in err
