"""What a destination's copy of an instance needs done to it, read from the config.

A job keeps the rules that routed it; a reload may have changed or removed them since. The
steps (morph, de-identify, transcode) are worked out here from the job and today's config,
and named by a fingerprint the duplicate ledger keys on (on_duplicate: skip); prepare.py
carries them out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from router.core.burned_in import deidentified_routes
from router.core.config import DicomDestination as DicomConfig
from router.core.config import RouterConfig, Rule
from router.core.deid_spec import DeidentifyConfig
from router.core.errors import DeliveryError
from router.core.messages import JobHeader
from router.core.morph_spec import MorphAction

# DeidentifyConfig fields added since the ledger keyed rewrites with repr((morph,
# deidentify)): that form is rebuilt without them while they hold their defaults.
_FIELDS_AFTER_REPR_FORM = ("burned_in_annotation", "pseudonym_key")


@dataclass(frozen=True)
class Steps:
    morph: tuple[MorphAction, ...]
    deidentify: DeidentifyConfig | None
    transfer_syntaxes: tuple[str, ...]  # the destination's list; empty: any
    rules: tuple[str, ...] = ()  # the matched rules that send it here: their transforms apply
    deidentified_by: str = ""  # "rule X" or "destination Y", whose `deidentify` applies
    # It was routed to be de-identified, and nothing in the current config de-identifies it
    # here (a reload removed the rule's or the destination's settings): never sent.
    deidentify_lost: bool = False
    # Rules that routed it here and are gone from the config (removed or renamed by a
    # reload): their morph and de-identification are unknown, so it is never sent.
    rules_lost: tuple[str, ...] = ()
    # Whose each morph action is, in step with `morph`: "rule X" or "destination Y", for the
    # dead letter of a replace pattern past its deadline.
    morph_by: tuple[str, ...] = ()

    @property
    def rewrites(self) -> bool:
        return bool(self.morph) or self.deidentify is not None


def steps_for(config: RouterConfig, job: JobHeader, destination: str,
              rules: Mapping[str, Rule] | None = None) -> Steps:
    """What `destination` gets done to `job` (`rules`: config.rules by name, if at hand).

    Every matched rule that names the destination counts, in rule order: their morphs run
    one after the other, then the destination's; a de-identifying one de-identifies, after
    every morph. Only the first rule's were applied before, and a later rule's `deidentify`
    was silently dropped. When several matched rules de-identify with different settings,
    the first of them (in rule order) gives the settings; check-config notes it."""
    rules = rules if rules is not None else {rule.name: rule for rule in config.rules}
    # A job moved here from where its rule sent it (fallback, drain-to, replay --to) keeps
    # its rules' transforms, and that destination's de-identification: moving a queue must
    # never send an instance out with what a rule or a destination said to remove.
    origin = job.routed_as(destination)
    # The rules that routed it there when it was received, whatever a reload did to their
    # `forward` since (a job recorded without its routes: those that forward there now).
    routed = job.routed_by(origin)
    if routed is None:
        routed = tuple(name for name in job.rules
                       if name in rules and origin in rules[name].forward)
    named = [rules[name] for name in routed if name in rules]
    gone = tuple(name for name in routed if name not in rules)
    dest = config.destinations.get(destination)
    first = config.destinations.get(origin) if origin != destination else None
    morph = [*(a for rule in named for a in rule.morph), *(dest.morph if dest else ())]
    morph_by = [*(f"rule {rule.name}" for rule in named for _ in rule.morph),
                *(f"destination {destination}" for _ in (dest.morph if dest else ()))]
    # The rule's settings, else the destination it was routed to, else this one.
    candidates = [*((f"rule {r.name}", r.deidentify) for r in named),
                  (f"destination {origin}", first.deidentify if first else None),
                  (f"destination {destination}", dest.deidentify if dest else None)]
    by, deid = next(((by, d) for by, d in candidates if d is not None), ("", None))
    syntaxes = tuple(dest.transfer_syntaxes) if isinstance(dest, DicomConfig) else ()
    lost = deid is None and origin in job.deidentified
    return Steps(tuple(morph), deid, syntaxes, tuple(r.name for r in named), by, lost, gone,
                 tuple(morph_by))


def refuse_leaking_copies(steps: Steps, destination: str) -> None:
    """Fail closed on a morph copy that de-identification would leave identified (route-test
    predicts it with the same call; check-config warns of the config that does it)."""
    if steps.deidentify is None or not steps.morph:
        return
    from workers.transforms.deid_actions import leaking_copies

    if leaks := leaking_copies(steps.morph, steps.deidentify):
        raise DeliveryError("deidentify", f"not sent to {destination}: {leaks[0]}",
                            transient=False)


def copy_leaks(config: RouterConfig) -> list[str]:
    """check-config's notes: every rule and destination whose morphs copy an identifying
    attribute into one de-identification keeps (such instances become dead letters)."""
    from workers.transforms.deid_actions import leaking_copies

    notes = []
    for rule, name, dest, deid in deidentified_routes(config):
        morph = [*rule.morph, *(dest.morph if dest else ())]
        notes += [f"rule {rule.name} -> {name}: {leak}; such instances become "
                  f"`deidentify` dead letters" for leak in leaking_copies(morph, deid)]
    return notes


def rewrites_fingerprint(steps: Steps) -> str:
    """The settings of `steps`' morph and de-identification as sorted JSON, without the
    fields at their defaults: a field added later with its default, or another pydantic
    repr, leaves it as it was (with repr, every upgrade re-sent what `skip` should skip)."""
    if steps.rules_lost:  # unknown rewrites: no earlier delivery's bytes are these
        return json.dumps({"rules_lost": steps.rules_lost})
    if not steps.rewrites:
        return ""
    deid = steps.deidentify
    return json.dumps({"morph": [_settings(action) for action in steps.morph],
                       "deidentify": None if deid is None else _settings(deid)},
                      sort_keys=True, separators=(",", ":"))


def _settings(model: BaseModel) -> dict[str, object]:
    return model.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def repr_fingerprint(steps: Steps) -> str:
    """The form the ledger's rows had before rewrites_fingerprint: repr((morph,
    deidentify)) as pydantic wrote it for DeidentifyConfig without its later fields. Only
    rows younger than spool.duplicate_window are read, so it can go a release later."""
    if not steps.rewrites or steps.rules_lost:
        return ""
    return repr((steps.morph, None if steps.deidentify is None
                 else _ReprForm(steps.deidentify)))


@dataclass(frozen=True)
class _ReprForm:
    deid: DeidentifyConfig

    def __repr__(self) -> str:
        fields = type(self.deid).model_fields
        args = [f"{name}={getattr(self.deid, name)!r}" for name, info in fields.items()
                if info.repr and not (name in _FIELDS_AFTER_REPR_FORM
                                      and getattr(self.deid, name) == info.default)]
        return f"{type(self.deid).__name__}({', '.join(args)})"
