"""What each de-identification does with burned-in text, from the config alone: check-config's
notes and warnings, and the warning the supervisor logs at start and after a reload.

Apart from workers/prepare.py because the supervisor calls it and must not import pydicom.
"""

from __future__ import annotations

from collections.abc import Iterator

from router.core.config import Destination, RouterConfig, Rule
from router.core.deid_spec import DeidentifyConfig


def deidentified_routes(config: RouterConfig
                        ) -> Iterator[tuple[Rule, str, Destination | None, DeidentifyConfig]]:
    """Each (rule, destination name, destination, settings) whose instances leave
    de-identified: the rule's settings, else the destination's."""
    for rule in config.rules:
        for name in rule.forward:
            dest = config.destinations.get(name)
            deid = rule.deidentify or (dest.deidentify if dest else None)
            if deid is not None:
                yield rule, name, dest, deid


def burned_in_policies(config: RouterConfig) -> list[str]:
    """check-config's notes: what each de-identification does with burned-in text."""
    notes = []
    for rule, name, _, deid in deidentified_routes(config):
        what = ("refused: `deidentify` dead letters (burned_in_annotation: send lets "
                "them go)" if deid.burned_in_annotation == "refuse" else
                "sent with their pixels as they are (burned_in_annotation: send)")
        notes.append(f"rule {rule.name} -> {name}: de-identified; instances with "
                     f"BurnedInAnnotation YES are {what}")
    return notes


def burned_in_defaults(config: RouterConfig) -> list[str]:
    """A warning for each `deidentify` that leaves burned_in_annotation to its default,
    refuse: versions before it sent such instances, so an upgraded site's first sign was
    dead letters. Said by check-config and logged by `run`, until the setting is explicit."""
    owners = [*((f"rule {rule.name}", rule.deidentify) for rule in config.rules),
              *((f"destination {name}", dest.deidentify)
                for name, dest in config.destinations.items())]
    return [f"{owner}: its deidentify does not set burned_in_annotation, so instances with "
            f"BurnedInAnnotation YES become `deidentify` dead letters (the default, refuse; "
            f"versions before it sent them); set burned_in_annotation: refuse or send "
            f"explicitly" for owner, deid in owners
            if deid is not None and "burned_in_annotation" not in deid.model_fields_set]
