"""router/core/patterns.py: rule patterns matched with a deadline, and the shapes that need it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from pydicom import Dataset

from router.cli.main import main
from router.core.config import Rule, parse_config
from router.core.dimse_status import Status
from router.core.errors import DeliveryError, PatternTooSlow
from router.core.patterns import nested_quantifiers
from router.core.rules import AssociationFacts, RuleSet
from router.core.spool import Spool
from router.service.route_preview import explain
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from workers.prepare import Preparer
from workers.transforms.morph import apply_morph

from .helpers import make_header

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


# A replace pattern `regex` cannot settle within its deadline on this value (`re` ran for
# minutes on shapes like it); StudyDescription is LO, so the value fits its VR.
SLOW_REPLACE = {"action": "replace", "tag": "StudyDescription", "pattern": "^(a|aa)+$",
                "replacement": "x"}
SLOW_VALUE = "a" * 60 + "b"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _slow_morph_config(tmp_path: Path, where: str) -> Any:
    morph = [{"action": "set", "tag": "StationName", "value": "R"}, SLOW_REPLACE]
    pacs: dict[str, Any] = {"type": "folder", "path": str(tmp_path / "pacs")}
    rule: dict[str, Any] = {"name": "tidy", "forward": ["pacs"]}
    (rule if where == "rule" else pacs)["morph"] = morph
    return parse_config({"destinations": {"pacs": pacs}, "rules": [rule]})


def _timeouts(labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value("dicom_router_morph_pattern_timeouts_total", labels) or 0.0


@pytest.mark.parametrize(("where", "named"), [("rule", "rule tidy"),
                                              ("destination", "destination pacs")])
def test_a_morph_pattern_past_its_deadline_is_a_morph_dead_letter_naming_whose(
        tmp_path: Path, where: str, named: str) -> None:
    """Regression: a morph's replace ran with `re` and no deadline in the worker's delivery
    thread, which a catastrophic pattern held for minutes. Cut at the deadline, the instance
    is a `morph` dead letter (not retried: it would take as long again), counted, and
    route-test predicts the same dead letter."""
    config = _slow_morph_config(tmp_path, where)
    source = write_instance(tmp_path / "src", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                            tags={"StudyDescription": SLOW_VALUE})
    job = make_header(destinations=("pacs",), rules=("tidy",), routes=("pacs=tidy",))
    preparer = Preparer(config, Spool(tmp_path / "spool").create(), lambda: None)
    labels = {"destination": "pacs", "rule": "tidy" if where == "rule" else ""}
    before = _timeouts(labels)

    with pytest.raises(DeliveryError) as failed:
        preparer.prepare(job, "pacs", source)

    why = (f"{named}: morph replace on StudyDescription: pattern took too long on this "
           f"instance's value; fix the pattern and replay")
    assert (failed.value.reason, str(failed.value), failed.value.transient) == (
        "morph", why, False)
    assert _timeouts(labels) == before + 1
    assert list((tmp_path / "spool" / "relay").iterdir()) == []  # no copy left behind
    lines = explain(config, source, "CT1", "DICOM-ROUTER", "127.0.0.1")
    assert f"     DEAD LETTER (morph): {why}" in lines, lines


def test_an_ordinary_replace_keeps_what_re_made_of_it(tmp_path: Path) -> None:
    config = parse_config({"destinations": {"pacs": {"type": "folder", "path": "/tmp/p"}},
                           "rules": [{"name": "r", "forward": ["pacs"], "morph": [
                               {"action": "replace", "tag": "AccessionNumber",
                                "pattern": r"^(\d{4})-0*(\d+)$", "replacement": r"\2/\1"},
                               {"action": "replace", "tag": "StudyDescription",
                                "pattern": "x*", "replacement": "-"}]}]})
    ds = Dataset()
    ds.AccessionNumber, ds.StudyDescription = "2024-0012", "ab"
    apply_morph(ds, config.rules[0].morph)
    assert (ds.AccessionNumber, ds.StudyDescription) == ("12/2024", re.sub("x*", "-", "ab"))


def test_check_config_warns_of_nested_quantifiers_in_morph_patterns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "router.yaml"
    nested = {**SLOW_REPLACE, "pattern": r"^(\w+\s?)+$"}
    config.write_text(yaml.safe_dump({
        "spool": {"path": str(tmp_path / "spool")},
        "destinations": {"a": {"type": "folder", "path": str(tmp_path / "a"),
                               "morph": [nested]}},
        "rules": [{"name": "words", "forward": ["a"],
                   "morph": [{"action": "set", "tag": "StationName", "value": "R"}, nested]}]}))
    assert main(["check-config", str(config)]) == 0
    err = capsys.readouterr().err
    for owner, n in (("rule 'words'", 1), ("destination 'a'", 0)):
        assert (f"dicom-router check-config: warning: {owner}: morph[{n}] replace pattern "
                f"'^(\\\\w+\\\\s?)+$' repeats a group that repeats inside") in err, err
    assert "becomes a `morph` dead letter" in err


@pytest.mark.parametrize(("morph", "loaded"), [
    ([], False), ([{"action": "prefix", "tag": "AccessionNumber", "value": "R-"}], False),
    ([SLOW_REPLACE], True)])
def test_regex_is_imported_only_for_a_config_with_a_pattern(
        tmp_path: Path, morph: list[dict[str, str]], loaded: bool) -> None:
    """2 MB in every process: loaded, routed and morphed, a config without a `re:` match or
    a `replace` morph never imports it."""
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "destinations": {"a": {"type": "folder", "path": str(tmp_path / "a")}},
        "rules": [{"name": "ct", "match": {"calling_ae": "CT1", "tags": {"Modality": "CT"}},
                   "forward": ["a"], "morph": morph}]}))
    code = (
        "import sys\n"
        "from pydicom import Dataset\n"
        "from pathlib import Path\n"
        "from router.core.config import load_config\n"
        "from router.core.rules import AssociationFacts, RuleSet\n"
        "from workers.transforms.morph import apply_morph\n"
        f"config = load_config(Path({str(config)!r}))\n"
        "facts = AssociationFacts('CT1', 'DICOM-ROUTER', '10.1.2.3')\n"
        "assert RuleSet(config.rules).route(facts, lambda: {'Modality': 'CT'}).rules\n"
        "ds = Dataset(); ds.AccessionNumber = 'A1'; ds.StudyDescription = 'CT'\n"
        "apply_morph(ds, config.rules[0].morph)\n"
        "print('regex' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == str(loaded)
