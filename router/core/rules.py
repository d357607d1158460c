"""Routing rules as pure functions: association facts and header tags in, destinations out."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from router.core.config import RouterConfig, Rule, RuleMatch, StrOrList
from router.core.patterns import compile_pattern, search
from router.core.peer_address import mapped_sources, source_network


@dataclass(frozen=True)
class AssociationFacts:
    """What the router knows about the sender before it reads any dataset."""

    calling_ae: str
    called_ae: str
    source: str  # peer IP address


@dataclass(frozen=True)
class RouteDecision:
    rules: tuple[str, ...]
    destinations: tuple[str, ...]
    action: str = "forward"  # or "drop"/"reject": then rules[-1] is the rule that said so
    # Each matched forwarding rule's `priority`, in rule order: the job takes the most
    # urgent of them (router/acceptor/store_decision.py), not only the first rule's.
    priorities: tuple[str, ...] = ("request",)
    # Every matched rule that waits for completion, in rule order: each holds what it
    # routes to its own destinations (router/broker/completion.py).
    completes: tuple[Rule, ...] = ()
    # For a drop/reject after `continue: true` rules: what they had chosen, not kept.
    discarded: tuple[str, ...] = ()
    # The destinations that a matched rule or the destination itself de-identifies for.
    deidentified: tuple[str, ...] = ()
    # "<destination>=<rule>" for each matched rule and each destination it forwards to: the
    # rules whose transforms a destination gets, whatever a reload does to their `forward`.
    # Derived from `rules` and the config, so left out of ==.
    routes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def matched(self) -> bool:
        return bool(self.destinations)


TagReader = Callable[[], Mapping[str, str]]
# Calling AE titles whose candidate rules RuleSet keeps (a sender could make up any number).
CALLING_AES_KEPT = 4096


def _values(expected: StrOrList) -> list[str]:
    return [expected] if isinstance(expected, str) else expected


class ValueMatcher:
    """Matches one value against "exact", ["any", "of"] or "re:<regex>" (searched, not
    anchored; PatternTooSlow, naming `rule`, when a search runs past its deadline)."""

    def __init__(self, expected: StrOrList, rule: str = "") -> None:
        self.rule = rule
        self.exact = {v for v in _values(expected) if not v.startswith("re:")}
        self.patterns = [compile_pattern(v[3:]) for v in _values(expected)
                         if v.startswith("re:")]

    def __call__(self, value: str) -> bool:
        return value in self.exact or any(search(p, value, self.rule) for p in self.patterns)


class CompiledRule:
    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        m: RuleMatch = rule.match
        name = rule.name
        self.calling = ValueMatcher(m.calling_ae, name) if m.calling_ae is not None else None
        self.called = ValueMatcher(m.called_ae, name) if m.called_ae is not None else None
        if m.source is None:
            self.networks = None
        else:
            self.networks = [source_network(n) for n in m.source]
        self.tags = {k: ValueMatcher(v, name) for k, v in m.tags.items()}
        self.sop_class = ValueMatcher(m.sop_class, name) if m.sop_class is not None else None
        # Routes instances: forwards them, or drops or rejects them.
        self.stores = bool(rule.forward) or rule.action != "forward"

    def may_match_calling(self, calling_ae: str) -> bool:
        """Whether the calling AE title leaves this rule a chance (the other conditions are
        checked per instance)."""
        c = self.calling
        return c is None or bool(c.patterns) or calling_ae in c.exact

    def matches_sop_class(self, sop_class: str | None) -> bool:
        return self.sop_class is None or (sop_class is not None and self.sop_class(sop_class))

    def matches_association(self, facts: AssociationFacts) -> bool:
        if self.calling and not self.calling(facts.calling_ae):
            return False
        if self.called and not self.called(facts.called_ae):
            return False
        if self.networks is not None:
            try:
                address = ipaddress.ip_address(facts.source)
            except ValueError:
                return False
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped  # a dual-stack listener sees ::ffff:a.b.c.d
            return any(address in net for net in self.networks)
        return True

    def matches_tags(self, tags: Mapping[str, str]) -> bool:
        # A missing tag never matches: "Modality: CT" means the instance says CT.
        return all(k in tags and m(tags[k]) for k, m in self.tags.items())


class RuleSet:
    """Rules in config order; the first match wins unless that rule says `continue: true`."""

    def __init__(self, rules: Iterable[Rule], deidentifying: Iterable[str] = ()) -> None:
        """`deidentifying`: the destinations whose own config de-identifies."""
        self.rules = [CompiledRule(r) for r in rules]
        self.deidentifying = frozenset(deidentifying)
        # Nothing to record (and no work per instance) when nothing de-identifies.
        self.any_deidentify = bool(self.deidentifying) or any(
            r.rule.deidentify is not None for r in self.rules)
        self._storing: dict[str, tuple[CompiledRule, ...]] = {}

    def storing(self, calling_ae: str) -> tuple[CompiledRule, ...]:
        """The rules that may route a C-STORE from `calling_ae`, in rule order. A regional
        config has rules per site and modality AE, 2,000 of them: tried one by one, they cost
        1.5 ms of the acceptor's CPU per instance (its whole cost was 1.4 ms with 10 rules),
        though only a few name the sender. Kept per calling AE title, a bounded number."""
        rules = self._storing.get(calling_ae)
        if rules is None:
            if len(self._storing) >= CALLING_AES_KEPT:
                self._storing.clear()  # AE titles beyond the bound: start afresh
            rules = tuple(r for r in self.rules if r.stores and r.may_match_calling(calling_ae))
            self._storing[calling_ae] = rules
        return rules

    @cached_property
    def tag_keywords(self) -> tuple[str, ...]:
        """The header keywords any rule needs: the only ones read from a dataset."""
        return tuple(sorted({k for r in self.rules for k in r.tags}))

    @cached_property
    def by_name(self) -> dict[str, Rule]:
        return {r.rule.name: r.rule for r in self.rules}

    @cached_property
    def completes(self) -> bool:
        return any(r.rule.complete is not None for r in self.rules)

    def route(self, facts: AssociationFacts, read_tags: TagReader,
              sop_class: str | None = None) -> RouteDecision:
        """Where a received instance goes: rules with `forward` (or drop/reject) only."""
        tags: Mapping[str, str] | None = None
        names: list[str] = []
        destinations: dict[str, None] = {}  # ordered, without duplicates
        routes: list[str] = []
        priorities: list[str] = []
        completes: list[Rule] = []
        for rule in self.storing(facts.calling_ae):
            filters = rule.rule.action != "forward"
            if not rule.matches_sop_class(sop_class):
                continue
            if not rule.matches_association(facts):
                continue
            if rule.tags:
                tags = read_tags() if tags is None else tags  # read the file at most once
                if not rule.matches_tags(tags):
                    continue
            names.append(rule.rule.name)
            if filters:
                return RouteDecision(tuple(names), (), rule.rule.action,
                                     discarded=tuple(destinations))
            destinations.update(dict.fromkeys(rule.rule.forward))
            routes += (f"{d}={rule.rule.name}" for d in rule.rule.forward)
            priorities.append(rule.rule.priority)
            if rule.rule.complete is not None:
                completes.append(rule.rule)
            if not rule.rule.continue_:
                break
        deidentified = self._deidentified(names, destinations) if self.any_deidentify else ()
        return RouteDecision(tuple(names), tuple(destinations), "forward",
                             tuple(priorities) or ("request",), tuple(completes),
                             deidentified=deidentified, routes=tuple(routes))

    def _deidentified(self, names: list[str], destinations: Iterable[str]) -> tuple[str, ...]:
        by_rule = {d for name in names if (rule := self.by_name[name]).deidentify is not None
                   for d in rule.forward}
        return tuple(d for d in destinations if d in by_rule or d in self.deidentifying)

    def upstreams(self, facts: AssociationFacts, sop_class: str) -> RouteDecision:
        """Where a query, retrieve or N-request goes: the `query` list of the first rule with
        one that matches (tags are never read: a request has no instance to read them from),
        in the order to try."""
        for rule in self.rules:
            if (rule.rule.query and not rule.tags and rule.matches_sop_class(sop_class)
                    and rule.matches_association(facts)):
                return RouteDecision((rule.rule.name,), tuple(rule.rule.query))
        return RouteDecision((), ())


def deidentifying(config: RouterConfig) -> tuple[str, ...]:
    """The destinations whose own config de-identifies (RuleSet records them per job)."""
    return tuple(name for name, d in config.destinations.items() if d.deidentify is not None)


def _exact(expected: StrOrList | None) -> set[str] | None:
    """The values a condition matches, or None when it matches more (none given, or a
    pattern among them)."""
    if expected is None:
        return None
    values = _values(expected)
    return None if any(v.startswith("re:") for v in values) else set(values)


def _disjoint(a: StrOrList | None, b: StrOrList | None) -> bool:
    exact_a, exact_b = _exact(a), _exact(b)
    return exact_a is not None and exact_b is not None and not exact_a & exact_b


def may_both_match(a: Rule, b: Rule) -> bool:
    """False when no instance can match both rules: exact calling or called AE titles, SOP
    classes or values of one tag that they do not share, or source networks that do not
    overlap. A regional config has a rule per site and modality AE: without this, the
    warnings below named every pair of them (8,000 lines for 2,000 rules), though only
    rules that can both match need a word."""
    ma, mb = a.match, b.match
    if (_disjoint(ma.calling_ae, mb.calling_ae) or _disjoint(ma.called_ae, mb.called_ae)
            or _disjoint(ma.sop_class, mb.sop_class)):
        return False
    if any(_disjoint(expected, mb.tags[k]) for k, expected in ma.tags.items() if k in mb.tags):
        return False
    if ma.source is not None and mb.source is not None:
        return any(x.version == y.version and x.overlaps(y)
                   for x in _networks(tuple(ma.source)) for y in _networks(tuple(mb.source)))
    return True


@functools.lru_cache(maxsize=4096)
def _networks(source: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [source_network(n) for n in source]  # parsed once per rule, not per pair


def mapped_source_notes(config: RouterConfig) -> list[str]:
    """For check-config: the source networks written IPv4-mapped, and what they are checked
    as (a dual-stack listener checks an IPv4 sender by its IPv4 address)."""
    where = [("listen.allowed_sources", config.listen.allowed_sources),
             *((f"rule {r.name!r} source", r.match.source) for r in config.rules)]
    return [f"{place}: {entry!r} is checked as {network} (senders on a dual-stack listener "
            f"are matched by their IPv4 address); write {network} to say so"
            for place, entries in where for entry, network in mapped_sources(entries)]


def drops_after_continue(rules: Iterable[Rule]) -> list[str]:
    """A drop or reject rule after a `continue: true` rule that forwards: when both match,
    the drop ends the evaluation and the earlier rule's destinations are not kept. Allowed
    (that is what drop means), but easy to miss, so `check-config` says it."""
    notes: list[str] = []
    forwarding: list[Rule] = []
    for rule in rules:
        if rule.action != "forward":
            notes += [f"rule {rule.name!r} ({rule.action}) follows rule {earlier.name!r} "
                      f"(continue: true, forward: {', '.join(earlier.forward)}): when both "
                      f"match, the {rule.action} wins and nothing goes to "
                      f"{', '.join(earlier.forward)}" for earlier in forwarding
                      if may_both_match(earlier, rule)]
        elif rule.continue_ and rule.forward:
            forwarding.append(rule)
    return notes


def shared_destinations(rules: Iterable[Rule]) -> list[str]:
    """A destination that several rules forward to, one of them with `continue: true` before
    another, and transforms in any of them: when several match, it gets every one's
    (workers/prepare.py steps_for). `check-config` says so, as route-test does per file."""
    rules = [r for r in rules if r.forward]
    notes: list[str] = []
    for destination in dict.fromkeys(d for r in rules for d in r.forward):
        named = [r for r in rules if destination in r.forward]
        # Both can match only if a `continue: true` rule comes before another one.
        if not any(r.continue_ for r in named[:-1]) or not any(
                r.morph or r.deidentify for r in named):
            continue
        deids = [r for r in named if r.deidentify is not None]
        names = ", ".join(f"{r.name}{' (continue: true)' if r.continue_ else ''}"
                          for r in named)
        note = (f"destination {destination!r} is named by rules {names}: when more than "
                f"one of them matches, it gets the morphs of each in rule order")
        if len({r.deidentify.model_dump_json() for r in deids if r.deidentify}) > 1:
            note += (f"; it is de-identified, after every morph, with the settings of the "
                     f"first matching rule of {', '.join(r.name for r in deids)} (their "
                     f"settings differ)")
        elif deids:
            note += (f"; it is de-identified as rule {deids[0].name} says whenever that rule "
                     f"matches, after every morph")
        notes.append(note)
    return notes


def shared_completions(rules: Iterable[Rule]) -> list[str]:
    """A destination that two completion rules forward to, the earlier with `continue:
    true` (else both never match): when both match, the first holds it by its `complete`
    and the later one's is not used there (router/broker/completion.py). Allowed, but
    silent, so `check-config` warns and the router logs it at start and at reload."""
    completing = [r for r in rules if r.complete is not None and r.forward]
    notes: list[str] = []
    for i, first in enumerate(completing):
        if not first.continue_:
            continue
        for later in completing[i + 1:]:
            if not may_both_match(first, later):
                continue
            notes += [f"destination {d!r} is held by completion rules {first.name!r} and "
                      f"{later.name!r}: when both match, {first.name!r} (the first in rule "
                      f"order) holds it with its `complete` settings, and {later.name!r}'s "
                      f"do not apply there" for d in first.forward if d in later.forward]
    return notes


def per_cell_completions(rules: Iterable[Rule], shared_state: bool) -> list[str]:
    """Completion rules in a router that shares `spool.shared_state_dir`, that is one of
    several cells behind a load balancer: each cell holds only what reached it, so a study
    the balancer spread over cells goes as one "complete" batch per cell. `check-config`
    says so and the router logs it at start and at reload (docs/scale-out.md)."""
    names = [r.name for r in rules if r.complete is not None and r.forward]
    if not shared_state or not names:
        return []
    return [f"completion rules {', '.join(repr(n) for n in names)} hold what this cell "
            f"received, and spool.shared_state_dir says it is one of several cells: a "
            f"study sent over several associations that the load balancer spreads over "
            f"cells goes as one batch per cell, each one \"complete\"; balance by source "
            f"(HAProxy `balance source`, Kubernetes `sessionAffinity: ClientIP`) to keep "
            f"each sender on one cell (docs/scale-out.md \"What stays per cell\")"]
