"""workers/prepare.py steps_for: what a destination gets done to a job, also once the job was
moved there from where its rule sent it (fallback, drain-to, dead-letters replay --to)."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from router.core.config import parse_config
from router.core.deid_spec import DeidentifyConfig
from router.core.errors import DeliveryError
from router.core.messages import JobHeader
from router.core.morph_spec import MorphAction
from router.core.spool import Spool
from tests.dicom_samples import write_instance
from workers.prepare import Preparer
from workers.prepare_steps import Steps, repr_fingerprint, rewrites_fingerprint, steps_for

from .helpers import make_header

CONFIG = parse_config({
    "destinations": {
        "research": {"type": "folder", "path": "/tmp/r", "fallback": ["spare"],
                     "deidentify": {}},
        "pacs": {"type": "folder", "path": "/tmp/p", "fallback": ["spare"]},
        "spare": {"type": "folder", "path": "/tmp/s",
                  "morph": [{"action": "set", "tag": "StationName", "value": "SPARE"}]},
        "other": {"type": "folder", "path": "/tmp/o"},
    },
    "rules": [{"name": "anon", "forward": ["pacs"], "deidentify": {},
               "morph": [{"action": "set", "tag": "InstitutionName", "value": "X"}]},
              {"name": "plain", "forward": ["research"]}],
})


def _moved(job: JobHeader, source: str, target: str) -> JobHeader:
    """As the broker's retarget and the dead letters' replay rewrite a header."""
    destinations = tuple(dict.fromkeys(target if d == source else d for d in job.destinations))
    return dataclasses.replace(job, destinations=destinations,
                               moved_from=job.moved(source, target))


def test_a_job_moved_to_another_destination_keeps_its_rules_transforms() -> None:
    """Before, the rule was looked up by the new destination, which no rule forwards to: a
    de-identifying rule's instances went to the fallback as received, PHI and all."""
    job = make_header(destinations=("pacs",), rules=("anon",))
    here = steps_for(CONFIG, job, "pacs")
    assert here.deidentify is not None and [a.tag for a in here.morph] == ["InstitutionName"]
    moved = _moved(job, "pacs", "spare")
    there = steps_for(CONFIG, moved, "spare")
    assert there.deidentify is not None
    assert [a.tag for a in there.morph] == ["InstitutionName", "StationName"]  # + its own
    again = _moved(moved, "spare", "other")  # drained on once more: still the first rule's
    assert again.moved_from == ("other=pacs",)
    assert steps_for(CONFIG, again, "other").deidentify is not None


def test_a_destinations_de_identification_goes_with_its_queue() -> None:
    job = make_header(destinations=("research",), rules=("plain",))
    assert steps_for(CONFIG, _moved(job, "research", "spare"), "spare").deidentify is not None


def test_moved_back_where_the_rule_sent_it_forgets_the_move() -> None:
    job = make_header(destinations=("pacs",), rules=("anon",))
    back = _moved(_moved(job, "pacs", "spare"), "spare", "pacs")
    assert back.moved_from == () and back.routed_as("pacs") == "pacs"
    assert JobHeader.from_dict(_moved(job, "pacs", "spare").to_dict()).moved_from == (
        "spare=pacs",)
    assert JobHeader.from_dict({k: v for k, v in job.to_dict().items()
                                if k != "moved_from"}).moved_from == ()  # older records


def test_a_morphed_value_invalid_for_its_vr_is_logged(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Written anyway (a PACS may take it) but said in the log, where before only route-test
    showed it."""
    config = parse_config({
        "destinations": {"pacs": {"type": "folder", "path": str(tmp_path / "p")}},
        "rules": [{"name": "long", "forward": ["pacs"], "morph": [
            {"action": "set", "tag": "AccessionNumber", "value": "RADIOLOGY-LONG-PREFIX-1"}]}],
    })
    source = write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax="1.2.840.10008.1.2.1")
    spool = Spool(tmp_path / "spool").create()
    job = make_header(destinations=("pacs",), rules=("long",),
                      transfer_syntax_uid="1.2.840.10008.1.2.1")
    with caplog.at_level(logging.WARNING):
        prepared = Preparer(config, spool, lambda: None).prepare(job, "pacs", source)
    prepared.cleanup()
    assert "morph wrote a value that is not valid for its VR" in caplog.text
    assert "AccessionNumber" in caplog.text or "(0008,0050)" in caplog.text


def test_the_acceptor_records_which_destinations_it_routed_to_be_de_identified() -> None:
    """Recorded per job (a rule's or a destination's deidentify), through the journal's
    JSON; nothing at all when nothing de-identifies, so such records stay as they were."""
    from router.core.rules import AssociationFacts, RuleSet, deidentifying

    facts = AssociationFacts("CT1", "DICOM-ROUTER", "10.1.2.3")
    anon = RuleSet(CONFIG.rules, deidentifying(CONFIG)).route(facts, dict)
    assert anon.destinations == ("pacs",) and anon.deidentified == ("pacs",)
    plain = RuleSet(CONFIG.rules[1:], deidentifying(CONFIG)).route(facts, dict)
    assert plain.deidentified == ("research",)  # the destination's own deidentify
    assert RuleSet(CONFIG.rules[1:]).route(facts, dict).deidentified == ()
    job = make_header(destinations=("research",), rules=("plain",),
                      deidentified=("research",))
    assert JobHeader.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    assert "deidentified" not in make_header().to_dict()


def test_a_replayed_job_whose_de_identification_is_gone_is_a_dead_letter(
        tmp_path: Path) -> None:
    """A reload removed the de-identifying destination and its rule now forwards elsewhere:
    the job replayed --to the new destination found no de-identification by name and was
    sent identified. Now it fails closed, unless where it goes de-identifies itself."""
    v2 = parse_config({
        "destinations": {"research2": {"type": "folder", "path": str(tmp_path / "r2")},
                         "safe": {"type": "folder", "path": str(tmp_path / "s"),
                                  "deidentify": {}}},
        "rules": [{"name": "plain", "forward": ["research2"], "deidentify": {}}],
    })
    job = make_header(destinations=("research",), rules=("plain",),
                      deidentified=("research",))
    replayed = _moved(job, "research", "research2")
    steps = steps_for(v2, replayed, "research2")
    assert steps.deidentify is None and steps.deidentify_lost
    source = write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax="1.2.840.10008.1.2.1")
    preparer = Preparer(v2, Spool(tmp_path / "spool").create(), lambda: None)
    with pytest.raises(DeliveryError) as failed:
        preparer.prepare(replayed, "research2", source)
    assert failed.value.reason == "deidentify" and not failed.value.transient
    assert "de-identification settings it was routed with" in str(failed.value)
    assert not list((tmp_path / "spool" / "relay").iterdir())  # no copy made
    safe = steps_for(v2, _moved(job, "research", "safe"), "safe")
    assert safe.deidentify is not None and not safe.deidentify_lost
    # A job never routed to be de-identified goes as before.
    assert not steps_for(v2, _moved(make_header(destinations=("research",), rules=("plain",)),
                                    "research", "research2"), "research2").deidentify_lost


def test_a_copy_the_spool_cannot_take_is_a_spool_write_failure(tmp_path: Path) -> None:
    """An OSError writing the worker's copy (here relay/ is a file; ENOSPC in
    tests/integration/test_spool_full.py) is the spool's problem, not the instance's: a
    transient `spool_write` failure naming where and why. It escaped before, and the worker
    retried it as `internal` with a traceback per attempt."""
    config = parse_config({
        "destinations": {"pacs": {"type": "folder", "path": str(tmp_path / "p")}},
        "rules": [{"name": "m", "forward": ["pacs"], "morph": [
            {"action": "set", "tag": "InstitutionName", "value": "X"}]}],
    })
    source = write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax="1.2.840.10008.1.2.1")
    spool = Spool(tmp_path / "spool").create()
    spool.relay.rmdir()
    spool.relay.write_bytes(b"")  # a file where the folder should be
    job = make_header(destinations=("pacs",), rules=("m",),
                      transfer_syntax_uid="1.2.840.10008.1.2.1")
    with pytest.raises(DeliveryError) as caught:
        Preparer(config, spool, lambda: None).prepare(job, "pacs", source)
    assert caught.value.reason == "spool_write" and caught.value.transient
    assert str(spool.relay) in str(caught.value)
    assert "ENOTDIR" in str(caught.value)


def test_a_full_uid_map_is_a_spool_write_failure(tmp_path: Path) -> None:
    """The de-identification UID map (SQLite, on the spool's disk) full: SQLite says so
    with its own error, not an OSError, which the worker retried as `internal`, a traceback
    per attempt and the attempts spent, like a full disk under a copy before."""
    from workers.transforms.uid_map import UidMap

    config = parse_config({
        "destinations": {"research": {"type": "folder", "path": str(tmp_path / "r")}},
        "rules": [{"name": "d", "forward": ["research"], "deidentify": {}}],
    })
    source = write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax="1.2.840.10008.1.2.1")
    spool = Spool(tmp_path / "spool").create()
    uids = UidMap(tmp_path / "key", tmp_path / "uids.sqlite")
    pages = uids._db.execute("PRAGMA page_count").fetchone()[0]
    uids._db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(sqlite3.OperationalError):  # filled up to its last page
        for n in range(10_000):
            uids._store(f"2.25.{n}", f"1.2.3.{n}", "uid")
    job = make_header(destinations=("research",), rules=("d",),
                      transfer_syntax_uid="1.2.840.10008.1.2.1")
    try:
        with pytest.raises(DeliveryError) as caught:
            Preparer(config, spool, lambda: uids).prepare(job, "research", source)
    finally:
        uids.close()
    assert caught.value.reason == "spool_write" and caught.value.transient
    assert "UID map" in str(caught.value) and "full" in str(caught.value)
    assert list(spool.relay.iterdir()) == []  # its copy removed


def _steps(deid: DeidentifyConfig | None, *morph: dict[str, str]) -> Steps:
    actions = tuple(TypeAdapter(MorphAction).validate_python(a) for a in morph)
    return Steps(actions, deid, ())


def test_the_rewrites_fingerprint_is_the_settings_that_differ_from_the_defaults() -> None:
    """Pinned: the ledger's rows of rewritten deliveries are keyed with it (skip)."""
    assert rewrites_fingerprint(_steps(None)) == ""
    assert rewrites_fingerprint(_steps(DeidentifyConfig())) == '{"deidentify":{},"morph":[]}'
    morphed = _steps(DeidentifyConfig(retain_dates=True),
                     {"action": "copy", "from": "StudyID", "to": "AccessionNumber"})
    assert rewrites_fingerprint(morphed) == (
        '{"deidentify":{"retain_dates":true},"morph":[{"action":"copy",'
        '"from":"StudyID","to":"AccessionNumber"}]}')


class _Later(DeidentifyConfig):
    """DeidentifyConfig as a later version that adds an option with a default."""

    later_option: bool = False


def test_a_setting_added_with_its_default_leaves_the_fingerprint_as_it_was() -> None:
    assert rewrites_fingerprint(_steps(_Later())) == rewrites_fingerprint(
        _steps(DeidentifyConfig()))
    assert rewrites_fingerprint(_steps(_Later(later_option=True))) != rewrites_fingerprint(
        _steps(DeidentifyConfig()))


def test_the_previous_form_is_what_e53fa78_recorded() -> None:
    """repr((morph, deidentify)) before DeidentifyConfig had burned_in_annotation."""
    assert repr_fingerprint(_steps(DeidentifyConfig(), {"action": "set",
                                                        "tag": "InstitutionName",
                                                        "value": "X"})) == (
        "((SetAction(tag='InstitutionName', value='X', vr=None, action='set'),), "
        "DeidentifyConfig(profile='basic', retain_uids=False, retain_dates=False, "
        "retain_device_identity=False, retain_patient_characteristics=False, "
        "clean_descriptions=False, uid_root='2.25', patient_id=None, patient_name=None, "
        "keep=[], private_tags='remove'))")
    assert "burned_in_annotation='send'" in repr_fingerprint(
        _steps(DeidentifyConfig(burned_in_annotation="send")))


def test_an_unreadable_received_file_is_a_spool_read_failure(tmp_path: Path) -> None:
    """The received instance's own file cannot be read (EIO under a bad sector; here a
    directory in its place): that job's problem, `spool_read`, retried with its attempts
    spent and then a dead letter. It was `spool_write` before, which spends no attempt and
    holds every delivery that needs a copy until the spool writes one again: one unreadable
    instance stopped every morphed, de-identified or transcoded delivery for good."""
    config = parse_config({
        "destinations": {"pacs": {"type": "folder", "path": str(tmp_path / "p")}},
        "rules": [{"name": "m", "forward": ["pacs"], "morph": [
            {"action": "set", "tag": "InstitutionName", "value": "X"}]}],
    })
    source = tmp_path / "jobs" / "unreadable.dcm"
    source.mkdir(parents=True)
    spool = Spool(tmp_path / "spool").create()
    job = make_header(destinations=("pacs",), rules=("m",),
                      transfer_syntax_uid="1.2.840.10008.1.2.1")
    with pytest.raises(DeliveryError) as caught:
        Preparer(config, spool, lambda: None).prepare(job, "pacs", source)
    assert caught.value.reason == "spool_read" and caught.value.transient
    assert "unreadable.dcm" in str(caught.value)
    assert list(spool.relay.iterdir()) == []  # no copy left behind


def _routed(config_rules: list[dict[str, object]]) -> JobHeader:
    """A job as the acceptor records it under these rules (routes included)."""
    from router.core.rules import AssociationFacts, RuleSet

    config = parse_config({"destinations": {n: {"type": "folder", "path": f"/tmp/{n}"}
                                            for n in ("a", "b")}, "rules": config_rules})
    decision = RuleSet(config.rules).route(AssociationFacts("CT1", "R", "10.1.2.3"), dict)
    return JobHeader.from_dict(json.loads(json.dumps(make_header(
        destinations=decision.destinations, rules=decision.rules,
        routes=decision.routes).to_dict())))


MORPH = [{"action": "prefix", "tag": "PatientID", "value": "SITE4-"}]


def test_a_queued_job_keeps_the_morph_of_the_rule_that_routed_it_after_a_reload() -> None:
    """A reload changed the rule's forward from a to b: the jobs queued for a reached it
    without the rule's morph (its forward no longer named a), PatientID unprefixed."""
    job = _routed([{"name": "main", "forward": ["a"], "morph": MORPH}])
    assert job.routes == ("a=main",)
    v2 = parse_config({"destinations": {n: {"type": "folder", "path": f"/tmp/{n}"}
                                        for n in ("a", "b")},
                       "rules": [{"name": "main", "forward": ["b"], "morph": MORPH}]})
    steps = steps_for(v2, job, "a")
    assert [a.tag for a in steps.morph] == ["PatientID"] and steps.rules == ("main",)
    assert not steps.rules_lost
    # A record written before routes were kept: the current forward says, as before.
    old = JobHeader.from_dict({k: v for k, v in job.to_dict().items() if k != "routes"})
    assert old.routes == () and steps_for(v2, old, "a").morph == ()


def test_a_job_whose_routing_rule_a_reload_removed_is_a_morph_dead_letter(
        tmp_path: Path) -> None:
    job = _routed([{"name": "main", "forward": ["a"], "morph": MORPH}])
    v2 = parse_config({"destinations": {"a": {"type": "folder", "path": str(tmp_path / "a")}},
                       "rules": [{"name": "renamed", "forward": ["a"]}]})
    source = write_instance(tmp_path / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax="1.2.840.10008.1.2.1")
    preparer = Preparer(v2, Spool(tmp_path / "spool").create(), lambda: None)
    with pytest.raises(DeliveryError) as failed:
        preparer.prepare(job, "a", source)
    assert failed.value.reason == "morph" and not failed.value.transient
    assert "rule main" in str(failed.value) and "replay" in str(failed.value)
    # Never taken for an earlier delivery of the bytes as received (on_duplicate: skip).
    assert preparer.fingerprint(job, "a") and not preparer.repr_fingerprint(job, "a")
