"""router/core/rules.py: RuleSet.route over association facts and lazily read header tags."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from router.core.config import Rule
from router.core.rules import AssociationFacts, RouteDecision, RuleSet

CT_FACTS = AssociationFacts(calling_ae="CT1", called_ae="DICOM-ROUTER", source="10.1.2.3")


class TagReader:
    """Returns fixed tags and counts how often the router asked for them."""

    def __init__(self, tags: Mapping[str, str] | None = None) -> None:
        self.tags = dict(tags or {})
        self.calls = 0

    def __call__(self) -> Mapping[str, str]:
        self.calls += 1
        return self.tags


def rule(name: str, forward: list[str], *, cont: bool = False, **match: Any) -> Rule:
    return Rule.model_validate(
        {"name": name, "match": match, "forward": forward, "continue": cont}
    )


def ruleset(*rules: Rule) -> RuleSet:
    return RuleSet(rules)


def facts(
    calling: str = "CT1", called: str = "DICOM-ROUTER", source: str = "10.1.2.3"
) -> AssociationFacts:
    return AssociationFacts(calling_ae=calling, called_ae=called, source=source)


# --- order, first match, fan-out ---------------------------------------------------------------


def test_first_match_wins() -> None:
    rs = ruleset(
        rule("ct", ["pacs"], calling_ae="CT1"),
        rule("all", ["archive"]),
    )

    decision = rs.route(CT_FACTS, TagReader())

    assert decision == RouteDecision(rules=("ct",), destinations=("pacs",))
    assert decision.matched is True


def test_later_rule_matches_when_earlier_does_not() -> None:
    rs = ruleset(
        rule("mr", ["pacs"], calling_ae="MR1"),
        rule("all", ["archive"]),
    )

    assert rs.route(CT_FACTS, TagReader()) == RouteDecision(("all",), ("archive",))


def test_continue_fans_out_with_deduplicated_ordered_destinations() -> None:
    rs = ruleset(
        rule("a", ["pacs", "archive"], cont=True),
        rule("skipped", ["never"], calling_ae="MR1"),
        rule("b", ["archive", "research", "pacs"], cont=True),
        rule("c", ["backup"]),
        rule("after-stop", ["too-late"]),
    )

    decision = rs.route(CT_FACTS, TagReader())

    assert decision.rules == ("a", "b", "c")
    assert decision.destinations == ("pacs", "archive", "research", "backup")


def test_continue_on_last_matching_rule_just_ends() -> None:
    rs = ruleset(rule("a", ["pacs"], cont=True), rule("b", ["x"], calling_ae="MR1"))

    assert rs.route(CT_FACTS, TagReader()) == RouteDecision(("a",), ("pacs",))


def test_no_match_is_not_matched() -> None:
    rs = ruleset(rule("mr", ["pacs"], calling_ae="MR1"))

    decision = rs.route(CT_FACTS, TagReader())

    assert decision == RouteDecision((), ())
    assert decision.matched is False


def test_empty_ruleset_matches_nothing() -> None:
    assert ruleset().route(CT_FACTS, TagReader()).matched is False


# --- association facts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "calling", "hit"),
    [
        ("CT1", "CT1", True),
        ("CT1", "CT2", False),
        ("CT1", "ct1", False),
        (["CT1", "CT2"], "CT2", True),
        (["CT1", "CT2"], "CT3", False),
        ("re:^CT[0-9]$", "CT7", True),
        ("re:^CT[0-9]$", "CT77", False),
    ],
)
def test_calling_ae(expected: Any, calling: str, hit: bool) -> None:
    rs = ruleset(rule("r", ["pacs"], calling_ae=expected))

    assert rs.route(facts(calling=calling), TagReader()).matched is hit


@pytest.mark.parametrize(
    ("expected", "called", "hit"),
    [
        ("DICOM-ROUTER", "DICOM-ROUTER", True),
        ("DICOM-ROUTER", "OTHER", False),
        (["A", "DICOM-ROUTER"], "DICOM-ROUTER", True),
        (["A", "B"], "DICOM-ROUTER", False),
    ],
)
def test_called_ae(expected: Any, called: str, hit: bool) -> None:
    rs = ruleset(rule("r", ["pacs"], called_ae=expected))

    assert rs.route(facts(called=called), TagReader()).matched is hit


def test_calling_and_called_ae_must_both_match() -> None:
    rs = ruleset(rule("r", ["pacs"], calling_ae="CT1", called_ae="ROUTER-B"))

    assert rs.route(facts(calling="CT1", called="DICOM-ROUTER"), TagReader()).matched is False
    assert rs.route(facts(calling="CT1", called="ROUTER-B"), TagReader()).matched is True


@pytest.mark.parametrize(
    ("network", "source", "hit"),
    [
        ("10.0.0.0/8", "10.255.0.1", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("192.168.1.0/24", "192.168.1.77", True),
        ("192.168.1.0/24", "192.168.2.1", False),
        (["192.168.1.0/24", "10.0.0.0/8"], "10.0.0.1", True),
        (["192.168.1.0/24", "172.16.0.0/12"], "10.0.0.1", False),
        ("fd00::/8", "fd12:3456::1", True),
        ("fd00::/8", "fe80::1", False),
        ("::1/128", "::1", True),
        ("fd00::/8", "10.0.0.1", False),
        ("10.0.0.0/8", "fd00::1", False),
        ("10.0.0.0/8", "not-an-address", False),
        ("10.0.0.0/8", "", False),
        # Written IPv4-mapped: the IPv4 network it names (senders are matched as IPv4).
        ("::ffff:10.0.0.0/104", "10.1.2.3", True),
        ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", True),
        ("::ffff:127.0.0.1", "127.0.0.2", False),
    ],
)
def test_source_network(network: Any, source: str, hit: bool) -> None:
    rs = ruleset(rule("r", ["pacs"], source=network))

    assert rs.route(facts(source=source), TagReader()).matched is hit


def test_source_mismatch_skips_the_rule_but_not_the_next() -> None:
    rs = ruleset(
        rule("lan", ["pacs"], source="192.168.0.0/16"),
        rule("all", ["archive"]),
    )

    assert rs.route(facts(source="10.0.0.1"), TagReader()).rules == ("all",)


# --- tags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "value", "hit"),
    [
        ("CT", "CT", True),
        ("CT", "MR", False),
        ("CT", "CTX", False),
        ("CT", "ct", False),
        (["CT", "MR"], "MR", True),
        (["CT", "MR"], "US", False),
        ("re:^CHEST", "CHEST PA", True),
        ("re:^CHEST", "THORAX CHEST", False),
        ("re:CHEST", "THORAX CHEST", True),  # searched, not anchored
        ("re:^CHEST$", "CHEST PA", False),
        (["ABDOMEN", "re:^CHEST"], "CHEST", True),
        (["ABDOMEN", "re:^CHEST"], "HEAD", False),
    ],
)
def test_tag_values(expected: Any, value: str, hit: bool) -> None:
    rs = ruleset(rule("r", ["pacs"], tags={"StudyDescription": expected}))

    assert rs.route(CT_FACTS, TagReader({"StudyDescription": value})).matched is hit


def test_all_tags_of_a_rule_must_match() -> None:
    rs = ruleset(rule("r", ["pacs"], tags={"Modality": "CT", "StudyDescription": "re:^CHEST"}))

    hit = TagReader({"Modality": "CT", "StudyDescription": "CHEST"})
    miss = TagReader({"Modality": "MR", "StudyDescription": "CHEST"})
    assert rs.route(CT_FACTS, hit).matched is True
    assert rs.route(CT_FACTS, miss).matched is False


@pytest.mark.parametrize("expected", ["CT", "re:.*", "re:", ["", "CT"]])
def test_a_missing_tag_never_matches(expected: Any) -> None:
    rs = ruleset(rule("r", ["pacs"], tags={"Modality": expected}))

    assert rs.route(CT_FACTS, TagReader({"StudyDescription": "CHEST"})).matched is False


def test_empty_tag_value_matches_only_what_matches_empty() -> None:
    rs = ruleset(rule("r", ["pacs"], tags={"Modality": ""}))

    assert rs.route(CT_FACTS, TagReader({"Modality": ""})).matched is True
    assert rs.route(CT_FACTS, TagReader({"Modality": "CT"})).matched is False


# --- lazy tag reading --------------------------------------------------------------------------


def test_tags_are_read_at_most_once_per_route_call() -> None:
    rs = ruleset(
        rule("mr", ["pacs"], tags={"Modality": "MR"}),
        rule("chest", ["pacs"], cont=True, tags={"StudyDescription": "re:^CHEST"}),
        rule("ct", ["archive"], tags={"Modality": "CT"}),
    )
    reader = TagReader({"Modality": "CT", "StudyDescription": "CHEST"})

    decision = rs.route(CT_FACTS, reader)

    assert decision == RouteDecision(("chest", "ct"), ("pacs", "archive"),
                                     priorities=("request", "request"))
    assert reader.calls == 1

    rs.route(CT_FACTS, reader)
    assert reader.calls == 2  # once per route() call, never cached across calls


def test_tags_are_not_read_when_no_rule_needs_them() -> None:
    rs = ruleset(rule("ct", ["pacs"], calling_ae="CT1"), rule("all", ["archive"]))
    reader = TagReader({"Modality": "CT"})

    rs.route(CT_FACTS, reader)
    rs.route(facts(calling="MR1"), reader)

    assert reader.calls == 0


def test_tags_are_not_read_when_association_facts_already_fail() -> None:
    rs = ruleset(
        rule("mr", ["pacs"], calling_ae="MR1", tags={"Modality": "MR"}),
        rule("lan", ["pacs"], source="192.168.0.0/16", tags={"Modality": "CT"}),
    )
    reader = TagReader({"Modality": "CT"})

    decision = rs.route(CT_FACTS, reader)

    assert decision.matched is False
    assert reader.calls == 0


def test_tags_are_not_read_for_rules_after_the_first_match() -> None:
    rs = ruleset(rule("all", ["archive"]), rule("ct", ["pacs"], tags={"Modality": "CT"}))
    reader = TagReader({"Modality": "CT"})

    assert rs.route(CT_FACTS, reader).rules == ("all",)
    assert reader.calls == 0


def test_an_empty_tag_mapping_is_still_read_only_once() -> None:
    rs = ruleset(
        rule("a", ["pacs"], tags={"Modality": "CT"}),
        rule("b", ["pacs"], tags={"Modality": "MR"}),
    )
    reader = TagReader({})

    assert rs.route(CT_FACTS, reader).matched is False
    assert reader.calls == 1


def test_tag_keywords_are_the_sorted_union_over_rules() -> None:
    rs = ruleset(
        rule("a", ["pacs"], tags={"StudyDescription": "x", "Modality": "CT"}),
        rule("b", ["pacs"], calling_ae="CT1"),
        rule("c", ["pacs"], tags={"BodyPartExamined": "CHEST", "Modality": "MR"}),
    )

    assert rs.tag_keywords == ("BodyPartExamined", "Modality", "StudyDescription")


def test_tag_keywords_empty_without_tag_rules() -> None:
    assert ruleset(rule("all", ["archive"])).tag_keywords == ()


def test_every_matched_rule_gives_its_priority_and_completion() -> None:
    """Only the first matched rule's priority and `complete` were kept: a STAT rule's
    urgent after a `continue: true` low rule was lost, and so was a second completion."""
    low = Rule.model_validate({"name": "copy-all", "continue": True, "forward": ["archive"],
                               "priority": "low", "complete": {"level": "series"}})
    stat = Rule.model_validate({"name": "stat", "forward": ["pacs"], "priority": "urgent",
                                "complete": {"level": "study"}})
    decision = RuleSet([low, stat]).route(CT_FACTS, TagReader())
    assert decision.priorities == ("low", "urgent")
    assert [r.name for r in decision.completes] == ["copy-all", "stat"]


# --- many rules ------------------------------------------------------------------------------


def test_rules_for_other_calling_aes_are_not_tried_per_instance(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a regional config's 2,000 rules per site and modality AE were each tried
    for every instance (1.5 ms of the acceptor's CPU each), though only those that name the
    sender's AE title, a pattern or none can match: those alone are tried, in rule order."""
    from router.core.rules import CompiledRule

    tried: list[str] = []
    matches_association = CompiledRule.matches_association

    def counted(self: CompiledRule, facts: AssociationFacts) -> bool:
        tried.append(self.rule.name)
        return matches_association(self, facts)

    monkeypatch.setattr(CompiledRule, "matches_association", counted)
    sites = [rule(f"site-{n}", [f"d{n}"], calling_ae=[f"MOD{n}", f"ALT{n}"],
                  tags={"StudyDescription": f"re:^SITE{n}\\b"}) for n in range(2000)]
    rules = ruleset(rule("copy-ct", ["archive"], cont=True, calling_ae="re:^MOD1"),
                    *sites, rule("rest", ["other"], calling_ae=["LAST", "MOD1999"]))
    assert rules.route(facts("LAST"), TagReader()).destinations == ("other",)
    assert tried == ["copy-ct", "rest"]
    tried.clear()
    decision = rules.route(facts("MOD1999"), TagReader({"StudyDescription": "SITE1999 CT"}))
    assert decision.rules == ("copy-ct", "site-1999")
    assert tried == ["copy-ct", "site-1999"]


def test_the_rules_kept_per_calling_ae_stay_bounded_and_right() -> None:
    """Calling AE titles by the thousand (a sender may make them up): what RuleSet keeps
    per AE title stays bounded, and routing stays right after it starts afresh."""
    from router.core.rules import CALLING_AES_KEPT

    rules = ruleset(*(rule(f"site-{n}", [f"d{n}"], calling_ae=[f"MOD{n}", f"ALT{n}"],
                           tags={"StudyDescription": f"re:^SITE{n}\\b"}) for n in range(20)))
    for n in range(CALLING_AES_KEPT + 10):
        assert not rules.route(facts(f"X{n}"), TagReader()).matched
    assert len(rules._storing) <= CALLING_AES_KEPT
    assert rules.route(facts("ALT7"), TagReader({"StudyDescription": "SITE7"})).rules == (
        "site-7",)
