"""Which move destinations a relayed C-MOVE must not reach: those whose transforms it cannot
apply, whether the destination or a rule that forwards to it asks for them."""

from __future__ import annotations

from typing import Any

import pytest

from router.core.config import parse_config
from router.relay.move_targets import relay_move_notes, transforming_destinations


def _config(rule: dict[str, Any]) -> Any:
    return parse_config({
        "destinations": {
            "pacs": {"type": "dicom", "ae_title": "MOVEQR", "host": "127.0.0.1",
                     "port": 11112, "move_mode": "relay"},
            "research": {"type": "dicom", "ae_title": "RESEARCH", "host": "127.0.0.1",
                         "port": 11113},
            "plain": {"type": "dicom", "ae_title": "PLAIN", "host": "127.0.0.1",
                      "port": 11114}},
        "rules": [{"name": "qr", "query": ["pacs"], "continue": True},
                  {"name": "research", "forward": ["research"], **rule},
                  {"name": "rest", "forward": ["plain"]}]})


@pytest.mark.parametrize("rule", [
    {"deidentify": {"burned_in_annotation": "refuse"}},
    {"morph": [{"action": "set", "tag": "StationName", "value": "X"}]},
])
def test_a_destination_a_rule_transforms_for_is_no_relayed_move_target(
        rule: dict[str, Any]) -> None:
    """The README's research example de-identifies on the rule: only the destination's own
    settings were checked, so a relayed C-MOVE to RESEARCH sent it the upstream's files as
    they were, the patient's name and ID included."""
    config = _config(rule)
    assert transforming_destinations(config, "RESEARCH") == ["research"]
    assert transforming_destinations(config, "PLAIN") == []
    notes = relay_move_notes(config)
    assert len(notes) == 1 and "'research'" in notes[0] and "RESEARCH" in notes[0]


def test_a_rule_without_transforms_leaves_its_destination_a_move_target() -> None:
    config = _config({})
    assert transforming_destinations(config, "RESEARCH") == []
    assert relay_move_notes(config) == []


def test_a_fallback_of_a_destination_a_rule_de_identifies_for_is_no_relayed_move_target(
) -> None:
    """A fallback gets the jobs it stands in for with their rules' transforms (workers/
    prepare_steps.py routed_as), so it holds de-identified copies too: a relayed C-MOVE to
    its AE title sent it the upstream's files as they were. Down the chain as well."""
    config = parse_config({
        "destinations": {
            "pacs": {"type": "dicom", "ae_title": "MOVEQR", "host": "127.0.0.1",
                     "port": 11112, "move_mode": "relay"},
            "research": {"type": "dicom", "ae_title": "RESEARCH", "host": "127.0.0.1",
                         "port": 11113, "fallback": ["spare"]},
            "spare": {"type": "dicom", "ae_title": "SPARE", "host": "127.0.0.1",
                      "port": 11114, "fallback": ["last"]},
            "last": {"type": "dicom", "ae_title": "LAST", "host": "127.0.0.1",
                     "port": 11115},
            "plain": {"type": "dicom", "ae_title": "PLAIN", "host": "127.0.0.1",
                      "port": 11116}},
        "rules": [{"name": "qr", "query": ["pacs"], "continue": True},
                  {"name": "research", "forward": ["research"], "continue": True,
                   "deidentify": {"burned_in_annotation": "refuse"}},
                  {"name": "rest", "forward": ["plain"]}]})
    assert transforming_destinations(config, "SPARE") == ["spare"]
    assert transforming_destinations(config, "LAST") == ["last"]
    assert transforming_destinations(config, "PLAIN") == []
    assert len(relay_move_notes(config)) == 3
