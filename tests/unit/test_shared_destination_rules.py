"""Several matched rules that name one destination: the transforms of each apply, in rule
order, and a de-identifying one is never skipped (workers/prepare.py steps_for); rules that
de-identify with different settings take the first one's."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread

from router.core.config import parse_config
from router.core.deid_spec import DeidentifyConfig
from router.core.errors import DeliveryError
from router.core.rules import (
    AssociationFacts,
    RuleSet,
    shared_completions,
    shared_destinations,
)
from router.core.spool import Spool
from tests.dicom_samples import write_instance
from workers.prepare import Preparer, open_uid_map
from workers.prepare_steps import copy_leaks, steps_for
from workers.transforms.deid_actions import leaking_copies

from .helpers import make_header

CT = "1.2.840.10008.5.1.4.1.1.2"
DESTINATIONS = {"pacs": {"type": "folder", "path": "/tmp/p"},
                "research": {"type": "folder", "path": "/tmp/r",
                             "morph": [{"action": "set", "tag": "StationName", "value": "R"}]}}


def _set(tag: str, value: str) -> list[dict[str, str]]:
    return [{"action": "set", "tag": tag, "value": value}]


def _config(*rules: dict[str, Any]) -> Any:
    return parse_config({"destinations": DESTINATIONS, "rules": list(rules)})


COPY_ALL = {"name": "copy-all", "continue": True, "forward": ["pacs", "research"],
            "morph": _set("InstitutionName", "FIRST")}
RESEARCH_DEID = {"name": "research-deid", "match": {"tags": {"Modality": "CT"}},
                 "forward": ["research"], "deidentify": {},
                 "morph": _set("StudyDescription", "SECOND")}


def _routed(config: Any, modality: str = "CT") -> Any:
    decision = RuleSet(config.rules).route(AssociationFacts("CT1", "DICOM-ROUTER", "10.1.2.3"),
                                           lambda: {"Modality": modality}, CT)
    return make_header(destinations=decision.destinations, rules=decision.rules)


def test_a_later_rules_deidentify_applies_to_a_destination_an_earlier_rule_names() -> None:
    """The hunt's t11: research got the patient's name, the second rule's deidentify dropped
    because only the first rule naming the destination counted."""
    config = _config(COPY_ALL, RESEARCH_DEID)
    job = _routed(config)
    assert job.destinations == ("pacs", "research")
    research = steps_for(config, job, "research")
    assert research.deidentify is not None and research.deidentified_by == "rule research-deid"
    # Each rule's morph in rule order, then the destination's own.
    assert [a.tag for a in research.morph] == ["InstitutionName", "StudyDescription",
                                               "StationName"]
    assert research.rules == ("copy-all", "research-deid")
    pacs = steps_for(config, job, "pacs")
    assert pacs.deidentify is None and [a.tag for a in pacs.morph] == ["InstitutionName"]
    assert pacs.rules == ("copy-all",)


def test_an_earlier_rules_deidentify_holds_when_a_later_one_names_the_destination() -> None:
    config = _config({**COPY_ALL, "deidentify": {}}, {"name": "rest", "forward": ["research"]})
    steps = steps_for(config, _routed(config), "research")
    assert steps.deidentified_by == "rule copy-all" and steps.rules == ("copy-all", "rest")


def test_a_rule_that_does_not_match_adds_nothing() -> None:
    config = _config(COPY_ALL, RESEARCH_DEID)
    steps = steps_for(config, _routed(config, modality="MR"), "research")
    assert steps.deidentify is None and steps.rules == ("copy-all",)


def test_the_deidentified_copy_is_written_after_every_rules_morph(tmp_path: Path) -> None:
    """De-identification runs last, so what a later rule's morph writes is de-identified
    too: a morph copying the patient's name into a description does not survive."""
    config = _config({**COPY_ALL, "morph": []},
                     {**RESEARCH_DEID, "morph": [{"action": "copy", "from": "PatientName",
                                                  "to": "StudyDescription"}]})
    source = write_instance(tmp_path / "src", sop_class=CT,
                            transfer_syntax="1.2.840.10008.1.2.1",
                            tags={"PatientName": "Doe^Jane", "Modality": "CT"})
    spool = Spool(tmp_path / "spool").create()
    job = _routed(config)
    job = dataclasses.replace(job, transfer_syntax_uid="1.2.840.10008.1.2.1",
                              sop_instance_uid=str(dcmread(source).SOPInstanceUID))
    prepared = Preparer(config, spool, lambda: open_uid_map(spool)).prepare(
        job, "research", source)
    try:
        ds = dcmread(prepared.path)
    finally:
        prepared.cleanup()
    assert ds.PatientIdentityRemoved == "YES"
    assert "Doe" not in str(ds.PatientName) and "Doe" not in str(ds.get("StudyDescription"))


def test_a_morph_copy_into_an_attribute_the_profile_keeps_is_never_sent(tmp_path: Path) -> None:
    """PatientName copied into BodyPartExamined (Table E.1-1 keeps it) went out identified
    beside PatientIdentityRemoved YES: such a delivery is a dead letter, check-config warns,
    and a copy into an attribute the profile removes still goes (as above)."""
    leak = [{"action": "copy", "from": "PatientName", "to": "BodyPartExamined"}]
    config = _config({**COPY_ALL, "morph": []}, {**RESEARCH_DEID, "morph": leak})
    assert leaking_copies(config.rules[1].morph, DeidentifyConfig()) == [
        "a morph copies PatientName into BodyPartExamined, which de-identification keeps: "
        "it would go out identified"]
    assert copy_leaks(config) == [
        "rule research-deid -> research: a morph copies PatientName into BodyPartExamined, "
        "which de-identification keeps: it would go out identified; such instances become "
        "`deidentify` dead letters"]
    source = write_instance(tmp_path / "src", sop_class=CT,
                            transfer_syntax="1.2.840.10008.1.2.1",
                            tags={"PatientName": "Doe^Jane", "Modality": "CT"})
    spool = Spool(tmp_path / "spool").create()
    job = dataclasses.replace(_routed(config), transfer_syntax_uid="1.2.840.10008.1.2.1",
                              sop_instance_uid=str(dcmread(source).SOPInstanceUID))
    with pytest.raises(DeliveryError) as refused:
        Preparer(config, spool, lambda: open_uid_map(spool)).prepare(job, "research", source)
    assert (refused.value.reason, refused.value.transient) == ("deidentify", False)
    assert "Doe" not in str(refused.value)
    assert list(spool.relay.iterdir()) == []  # no copy written
    kept = _config(COPY_ALL, {**RESEARCH_DEID, "morph": [
        {"action": "copy", "from": "PatientName", "to": "StudyDescription"}]})
    assert copy_leaks(kept) == []  # StudyDescription is cleaned or removed by the profile


def test_matched_rules_with_different_deidentify_take_the_first_ones_settings() -> None:
    """Per-site rules (never both matched) or overlapping ones: a site with different
    settings per sender must be able to start; the first matching rule's settings apply,
    and check-config says so."""
    config = _config({**COPY_ALL, "deidentify": {"retain_dates": True}}, RESEARCH_DEID)
    both = make_header("job-1", ("pacs", "research"), rules=("copy-all", "research-deid"))
    steps = steps_for(config, both, "research")
    assert steps.deidentify is not None and steps.deidentify.retain_dates
    assert steps.deidentified_by == "rule copy-all"
    later = make_header("job-2", ("research",), rules=("research-deid",))
    assert steps_for(config, later, "research").deidentified_by == "rule research-deid"
    (note,) = [n for n in shared_destinations(config.rules) if "'research'" in n]
    assert "settings of the first matching rule of copy-all, research-deid" in note


def test_check_config_notes_what_a_shared_destination_gets() -> None:
    notes = shared_destinations(_config(COPY_ALL, RESEARCH_DEID).rules)
    assert len(notes) == 1  # pacs is named by one rule only
    research = notes[0]
    assert "copy-all (continue: true), research-deid" in research
    assert "de-identified as rule research-deid says" in research
    plain = _config({"name": "a", "continue": True, "forward": ["pacs"]},
                    {"name": "b", "forward": ["pacs"]})
    assert shared_destinations(plain.rules) == []  # nothing to transform: nothing to say


SERIES = {"name": "series-ai", "continue": True, "forward": ["pacs", "research"],
          "complete": {"level": "series"}}
STUDY = {"name": "study-archive", "forward": ["pacs"], "complete": {"level": "study"}}
HELD_BY_BOTH = ("destination 'pacs' is held by completion rules 'series-ai' and "
                "'study-archive': when both match, 'series-ai' (the first in rule order) "
                "holds it with its `complete` settings, and 'study-archive''s do not apply "
                "there")


def test_two_completion_rules_on_one_destination_are_named_with_the_one_that_holds() -> None:
    """Regression: when both matched, the first rule's `complete` held the destination and
    the later one's was silently unused there."""
    assert shared_completions(_config(SERIES, STUDY).rules) == [HELD_BY_BOTH]
    # Without continue: true on the first, both never match; other destinations: no clash.
    assert shared_completions(_config({**SERIES, "continue": False}, STUDY).rules) == []
    assert shared_completions(_config(SERIES, {**STUDY, "forward": ["research"]}).rules) == [
        HELD_BY_BOTH.replace("'pacs'", "'research'")]
    assert shared_completions(_config(SERIES, {**STUDY, "complete": None}).rules) == []


def test_check_config_warns_of_two_completion_rules_on_one_destination(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from router.cli.main import main

    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({"spool": {"path": str(tmp_path / "spool")},
                                      "destinations": DESTINATIONS, "rules": [SERIES, STUDY]}))
    assert main(["check-config", str(config)]) == 0
    assert f"dicom-router check-config: warning: {HELD_BY_BOTH}\n" in capsys.readouterr().err


def test_the_router_logs_two_completion_rules_on_one_destination(
        caplog: pytest.LogCaptureFixture) -> None:
    from router.service.preflight import warn_shared_completions

    with caplog.at_level(logging.WARNING):
        warn_shared_completions(_config(SERIES, STUDY))
    assert [r.getMessage() for r in caplog.records] == [HELD_BY_BOTH]


def _site_rules(sites: int) -> list[dict[str, Any]]:
    """A regional config's shape: per modality AE, an archive copy (continue: true), an AI
    series hold (continue: true, one AI node for all) and a drop of dose reports."""
    rules: list[dict[str, Any]] = []
    for site in range(sites):
        ae = f"CT{site}"
        rules += [{"name": f"copy-{site}", "match": {"calling_ae": ae}, "continue": True,
                   "forward": ["research"]},
                  {"name": f"ai-{site}", "match": {"calling_ae": [ae, f"ALT{site}"]},
                   "continue": True, "forward": ["pacs"], "complete": {"level": "series"}},
                  {"name": f"no-sr-{site}", "match": {"calling_ae": ae, "tags": {
                      "Modality": "SR"}}, "action": "drop"}]
    return rules


def test_rules_that_cannot_both_match_are_not_warned_of_pair_by_pair() -> None:
    """Regression: with a rule per site, every drop was named with every earlier site's
    continue rule, and every completion rule with every later one (8,179 warnings for 2,000
    rules, and as many log lines at each start and reload), though rules for different
    calling AE titles never both match. Only the pairs that can both match are named."""
    from router.core.rules import drops_after_continue

    rules = _config(*_site_rules(30)).rules
    drops = drops_after_continue(rules)
    # Each site's drop follows its own copy and ai rules: 2 per site, not 2 per earlier site.
    assert len(drops) == 60, len(drops)
    assert all(n.split("'")[1][len("no-sr-"):] == n.split("'")[3].split("-")[1]
               for n in drops), drops[:3]
    assert shared_completions(rules) == []
    # Rules that can both match are still named: an AE of both, or a pattern, or no AE.
    shared = [{**SERIES, "match": {"calling_ae": ["CT1", "CT2"]}},
              {**STUDY, "match": {"calling_ae": "re:^CT"}}]
    assert shared_completions(_config(*shared).rules) == [HELD_BY_BOTH]
    shared[1]["match"] = {"calling_ae": "CT2"}
    assert shared_completions(_config(*shared).rules) == [HELD_BY_BOTH]
    shared[1]["match"] = {"calling_ae": "MR1", "tags": {"Modality": "MR"}}
    assert shared_completions(_config(*shared).rules) == []


def test_other_conditions_that_exclude_each_other_are_not_warned_of() -> None:
    from router.core.rules import may_both_match

    def rules(a: dict[str, Any], b: dict[str, Any]) -> tuple[Any, Any]:
        first, second = _config({**SERIES, "match": a}, {**STUDY, "match": b}).rules
        return first, second

    assert not may_both_match(*rules({"source": ["10.1.0.0/16"]}, {"source": ["10.2.0.0/16"]}))
    assert may_both_match(*rules({"source": ["10.0.0.0/8"]}, {"source": ["10.2.0.0/16"]}))
    assert not may_both_match(*rules({"tags": {"Modality": ["CT", "PT"]}},
                                     {"tags": {"Modality": "MR", "BodyPartExamined": "X"}}))
    assert may_both_match(*rules({"tags": {"Modality": "CT"}}, {"tags": {"Modality": "re:T"}}))
    assert not may_both_match(*rules({"called_ae": "A"}, {"called_ae": "B"}))
    assert not may_both_match(*rules({"sop_class": "CTImageStorage"},
                                     {"sop_class": "MRImageStorage"}))
    assert may_both_match(*rules({"sop_class": "CTImageStorage"}, {}))


def test_completion_rules_in_one_of_several_cells_are_warned_of(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """Behind a load balancer each cell completes only its own part of a study: a study
    sent over several associations went to the AI node as one "complete" batch per cell,
    and nothing said so. check-config and the router's start now say it with the remedy."""
    from router.cli.main import main
    from router.service.preflight import warn_shared_completions

    data = {"spool": {"path": str(tmp_path / "spool")}, "destinations": DESTINATIONS,
            "rules": [STUDY]}
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["check-config", str(config)]) == 0
    assert "one batch per cell" not in capsys.readouterr().err  # one router: nothing to say
    (tmp_path / "shared").mkdir()
    data["spool"]["shared_state_dir"] = str(tmp_path / "shared")  # type: ignore[index]
    config.write_text(yaml.safe_dump(data))
    assert main(["check-config", str(config)]) == 0
    err = capsys.readouterr().err
    assert ("warning: completion rules 'study-archive' hold what this cell received" in err
            and "one batch per cell" in err and "balance source" in err), err
    with caplog.at_level(logging.WARNING):
        warn_shared_completions(parse_config(data))
    assert ["balance source" in r.getMessage() for r in caplog.records] == [True]
