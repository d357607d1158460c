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


DROP_AFTER_CONTINUE = [
    {"name": "copy-all", "match": {}, "forward": ["exact", "other"], "continue": True},
    {"name": "no-sr", "match": {"tags": {"Modality": "SR"}}, "action": "drop"}]


def test_route_test_names_what_a_drop_after_continue_discards(tmp_path: Path) -> None:
    config = _config(tmp_path, DROP_AFTER_CONTINUE)
    path = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                          modality="SR")
    lines = explain(config, path, "CT1", "DICOM-ROUTER", "127.0.0.1")
    assert "  DROP by rule no-sr: answered Success, nothing kept" in lines, lines
    assert any(line.startswith("  not sent to exact, other:") for line in lines), lines


def test_check_config_warns_of_a_drop_after_a_forwarding_continue_rule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from router.cli.main import main

    path = tmp_path / "router.yaml"
    rules = [*DROP_AFTER_CONTINUE, {"name": "rest", "match": {}, "forward": ["other"]}]
    path.write_text(yaml.safe_dump(
        {"spool": {"path": str(tmp_path / "spool")},
         "destinations": {n: {"type": "folder", "path": str(tmp_path / n)}
                          for n in ("exact", "other")}, "rules": rules}))
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: "), out
    warnings = err.splitlines()
    assert len(warnings) == 1, err
    assert warnings[0].startswith("dicom-router check-config: warning: rule 'no-sr' (drop) "
                                  "follows rule 'copy-all' (continue: true"), err


def test_the_consoles_rule_tester_predicts_the_morph_dead_letter_too(tmp_path: Path) -> None:
    from router.service.console.auth import Identity
    from router.service.console.forms import Posted
    from router.service.console.views_rules import test

    config = _config(tmp_path, [
        {"name": "tag", "match": {}, "forward": ["exact"],
         "morph": [{"action": "set", "tag": "(0013,1010)", "value": "x", "vr": "LO"}]}])
    path = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE)
    answer = test(Identity("olga", "operator", "token"), config,
                  Posted({}, {"file": ("ct.dcm", path)}))
    assert b"DEAD LETTER (morph): morphing failed" in answer.body, answer.body[-800:]
    assert b"cannot be read as DICOM" not in answer.body


def test_transcoding_names_the_syntaxes_the_worker_falls_back_to(tmp_path: Path) -> None:
    """The worker sends the first accepted syntax whose encoder succeeds on the image
    (openjpeg fails under 32 pixels); route-test encodes nothing, so it names them in order."""
    config = parse_config({
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": 11112,
                                  "transfer_syntaxes": ["JPEG2000Lossless", "JPEG2000",
                                                        "RLELossless"]}},
        "rules": [{"name": "all", "match": {}, "forward": ["pacs"]}]})
    path = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE)
    lines = explain(config, path, "CT1", "DICOM-ROUTER", "127.0.0.1")
    text = "\n".join(lines)
    first = next(i for i, line in enumerate(lines) if "transcoded Explicit VR Little" in line)
    assert lines[first].endswith("-> JPEG 2000 Image Compression (Lossless Only) "
                                 "1.2.840.10008.1.2.4.90"), text
    # The lossy JPEG 2000 is never a candidate.
    assert lines[first + 1:first + 3] == [
        "       else, if encoding fails, -> RLE Lossless 1.2.840.10008.1.2.5"], text


def test_a_leaking_copy_is_a_predicted_dead_letter_and_new_uids_are_not_made_up(
        tmp_path: Path) -> None:
    """The worker refuses a morph copy of PatientName into an attribute de-identification
    keeps: route-test says so. A de-identified folder copy's path depends on the router's
    key, which route-test never reads: it showed a path made with a throwaway key."""
    config = _config(tmp_path, [
        {"name": "leak", "match": {}, "forward": ["exact"], "continue": True, "deidentify": {},
         "morph": [{"action": "copy", "from": "PatientName", "to": "BodyPartExamined"}]},
        {"name": "deid", "match": {}, "forward": ["other"], "deidentify": {}}])
    path = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE)
    text = "\n".join(explain(config, path, "CT1", "DICOM-ROUTER", "127.0.0.1"))
    assert "DEAD LETTER (deidentify): not sent to exact: a morph copies PatientName into " \
        "BodyPartExamined" in text, text
    assert f"stored as {tmp_path / 'other'}/<new Study UID>/<new Series UID>/" in text, text


def test_burned_in_annotation_is_a_predicted_dead_letter_and_check_config_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BurnedInAnnotation YES went out de-identified without a word; now route-test predicts
    the worker's refusal, a suspect class sent anyway is warned of, and check-config says
    what each de-identification does with such instances."""
    import yaml

    from router.cli.main import main

    config = _config(tmp_path, [
        {"name": "deid", "match": {}, "forward": ["exact"], "deidentify": {}}])
    annotated = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                               tags={"BurnedInAnnotation": "YES"})
    text = "\n".join(explain(config, annotated, "CT1", "DICOM-ROUTER", "127.0.0.1"))
    assert "DEAD LETTER (deidentify): burned-in annotation: pixel data may identify the " \
        "patient" in text, text
    ultrasound = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                                tags={"Modality": "US"})
    text = "\n".join(explain(config, ultrasound, "CT1", "DICOM-ROUTER", "127.0.0.1"))
    assert "warning: no BurnedInAnnotation, and ultrasound instances often have text" in text, text
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(
        {"spool": {"path": str(tmp_path / "spool")},
         "destinations": {n: {"type": "folder", "path": str(tmp_path / n)}
                          for n in ("exact", "other")},
         "rules": [{"name": "deid", "forward": ["exact"], "deidentify": {}},
                   {"name": "open", "forward": ["other"],
                    "deidentify": {"burned_in_annotation": "send"}}]}))
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "rule deid -> exact: de-identified; instances with BurnedInAnnotation YES are " \
        "refused" in err, err
    assert "rule open -> other: de-identified; instances with BurnedInAnnotation YES are " \
        "sent with their pixels as they are" in err, err
    # The default refuses what versions before it sent: a warning until it is explicit.
    assert "warning: rule deid: its deidentify does not set burned_in_annotation, so " \
        "instances with BurnedInAnnotation YES become `deidentify` dead letters" in err, err
    assert "rule open: its deidentify" not in err, err


@pytest.mark.parametrize(("rules", "keyword"), [
    ([{"name": "by-series", "match": {"tags": {"SeriesNumber": "re:^[0-9]+$"}},
       "forward": ["exact"]}], "SeriesNumber"),
    ([{"name": "studies", "forward": ["exact"], "complete": {"level": "study"}}],
     "InstanceNumber"),
])
def test_a_number_the_acceptor_cannot_read_is_predicted_refused(
        tmp_path: Path, rules: list[dict[str, Any]], keyword: str) -> None:
    """Regression: IS '1e999' got 0x0110 live, while route-test (which did not read the
    completion rule's InstanceNumber) predicted a delivery."""
    config = _config(tmp_path, rules)
    path = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                          tags={keyword: 12345})
    assert path.read_bytes().count(b"12345") == 1
    path.write_bytes(path.read_bytes().replace(b"12345", b"1e999"))

    lines = explain(config, path, "CT1", "DICOM-ROUTER", "127.0.0.1")

    assert lines[-1].startswith(f"  REFUSED: the sender would get 0xC000 (dataset cannot be "
                                f"parsed: {keyword}: "), lines


def test_each_destination_shows_the_priority_its_rules_give_it(tmp_path: Path) -> None:
    """The queue takes the most urgent matched rule's priority; each destination's C-STORE
    carries that of the rules that routed the instance there."""
    config = _config(tmp_path, [
        {"name": "copy-all", "continue": True, "forward": ["other"], "priority": "low"},
        {"name": "stat", "forward": ["exact"], "priority": "urgent"}])
    path = write_instance(tmp_path / "in", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE)
    lines = explain(config, path, "CT1", "DICOM-ROUTER", "127.0.0.1")
    text = "\n".join(lines)
    assert text.index("  -> other") < text.index("     sent with priority low") \
        < text.index("  -> exact") < text.index("     sent with priority urgent"), text
