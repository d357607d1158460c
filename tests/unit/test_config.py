"""router/core/config/: parse_config, load_config, default_config and summary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.core.config import (
    DicomDestination,
    FolderDestination,
    RouterConfig,
    default_config,
    load_config,
    parse_config,
    summary,
)
from router.core.errors import ConfigError

EXAMPLE_YAML = """\
ae_title: DICOM-ROUTER
listen: {host: 0.0.0.0, port: 11112}
spool: {path: /var/lib/dicom-router/spool}
workers: 2
metrics: {host: 127.0.0.1, port: 9100}
destinations:
  pacs:    {type: dicom, ae_title: PACS, host: 127.0.0.1, port: 11113}
  archive: {type: folder, path: /var/lib/dicom-router/received}
rules:
  - name: ct-from-scanner
    match:
      calling_ae: [CT1, CT2]
      called_ae: DICOM-ROUTER
      source: 10.0.0.0/8
      tags: {Modality: CT, StudyDescription: "re:^CHEST"}
    forward: [pacs, archive]
  - name: everything-else
    forward: [archive]
"""


def example() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(EXAMPLE_YAML))


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems, "a ConfigError must list at least one problem"
    return info.value.problems


def paths_of(problems: list[str]) -> list[str]:
    return [p.split(": ", 1)[0] for p in problems]


# --- the example -----------------------------------------------------------------------


def test_example_config_parses_as_written() -> None:
    config = parse_config(example())

    assert config.ae_title == "DICOM-ROUTER"
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 11112)
    assert config.spool.path == Path("/var/lib/dicom-router/spool")
    assert config.workers == 2
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 9100)

    pacs = config.destinations["pacs"]
    assert isinstance(pacs, DicomDestination)
    assert (pacs.ae_title, pacs.host, pacs.port) == ("PACS", "127.0.0.1", 11113)
    archive = config.destinations["archive"]
    assert isinstance(archive, FolderDestination)
    assert archive.path == Path("/var/lib/dicom-router/received")

    first, second = config.rules
    assert first.name == "ct-from-scanner"
    assert first.match.calling_ae == ["CT1", "CT2"]
    assert first.match.called_ae == "DICOM-ROUTER"
    assert first.match.source == ["10.0.0.0/8"]  # one network is normalised to a list
    assert first.match.tags == {"Modality": "CT", "StudyDescription": "re:^CHEST"}
    assert first.forward == ["pacs", "archive"]
    assert first.continue_ is False
    assert second.name == "everything-else"
    assert second.forward == ["archive"]
    assert second.match.tags == {}
    assert second.match.calling_ae is None


def test_example_config_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(EXAMPLE_YAML, encoding="utf-8")

    assert load_config(path) == parse_config(example())


def test_summary_names_the_essentials() -> None:
    text = summary(parse_config(example()))

    assert text == (
        "ok: AE DICOM-ROUTER on 0.0.0.0:11112, 2 workers, 2 destinations, 2 rules, "
        "spool /var/lib/dicom-router/spool"
    )


def test_default_config_stores_everything_in_received() -> None:
    config = default_config()

    assert isinstance(config, RouterConfig)
    assert config.ae_title == "DICOM-ROUTER"
    assert config.listen.port == 11112
    assert list(config.destinations) == ["received"]
    received = config.destinations["received"]
    assert isinstance(received, FolderDestination)
    assert received.path == Path("received")
    assert [r.name for r in config.rules] == ["store-everything"]
    assert config.rules[0].forward == ["received"]
    assert config.rules[0].match.tags == {}
    assert summary(config).startswith("ok: AE DICOM-ROUTER on 0.0.0.0:11112, 2 workers, ")


def test_the_summary_puts_an_ipv6_listen_address_in_brackets() -> None:
    data = example()
    data["listen"]["host"] = "::1"  # "::1:11112" would itself read as an IPv6 address
    assert summary(parse_config(data)).startswith("ok: AE DICOM-ROUTER on [::1]:11112, ")


def test_continue_alias_sets_continue_() -> None:
    data = example()
    data["rules"][0]["continue"] = True

    config = parse_config(data)

    assert config.rules[0].continue_ is True
    assert config.rules[1].continue_ is False


def test_destination_ae_titles_are_stripped_of_padding() -> None:
    data = example()
    data["destinations"]["pacs"]["ae_title"] = " PACS "

    assert parse_config(data).destinations["pacs"].ae_title == "PACS"  # type: ignore[union-attr]


def test_ipv6_source_network_is_accepted() -> None:
    data = example()
    data["rules"][0]["match"]["source"] = ["10.0.0.0/8", "fd00::/8"]

    source = parse_config(data).rules[0].match.source

    assert source == ["10.0.0.0/8", "fd00::/8"]


# --- unknown keys, with their dotted path ------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(ae_titl="X"), "ae_titl: unknown key"),
        (lambda d: d["listen"].update(prot=1), "listen.prot: unknown key"),
        (lambda d: d["spool"].update(pth="x"), "spool.pth: unknown key"),
        (lambda d: d["metrics"].update(hots="x"), "metrics.hots: unknown key"),
        (
            lambda d: d["destinations"]["pacs"].update(ae_titl="X"),
            "destinations.pacs.ae_titl: unknown key",
        ),
        (
            lambda d: d["destinations"]["archive"].update(fsyn=True),
            "destinations.archive.fsyn: unknown key",
        ),
        (
            lambda d: d["destinations"]["pacs"].update(retry={"max_attempt": 3}),
            "destinations.pacs.retry.max_attempt: unknown key",
        ),
        (lambda d: d["rules"][1].update(forwrd=["archive"]), "rules[1].forwrd: unknown key"),
        (
            lambda d: d["rules"][0]["match"].update(calling="CT1"),
            "rules[0].match.calling: unknown key",
        ),
    ],
    ids=["top", "listen", "spool", "metrics", "dicom-dest", "folder-dest", "retry", "rule",
         "match"],
)
def test_unknown_keys_are_reported_with_their_dotted_path(mutate: Any, expected: str) -> None:
    data = example()
    mutate(data)

    assert problems_of(data) == [expected]


def test_unknown_key_in_destination_named_like_a_type_keeps_its_name() -> None:
    data = example()
    data["destinations"]["folder"] = {"type": "folder", "path": "/x", "bogus": 1}

    assert problems_of(data) == ["destinations.folder.bogus: unknown key"]


def test_unknown_destination_type_is_reported() -> None:
    data = example()
    data["destinations"]["ftp"] = {"type": "ftp", "path": "/x"}

    problems = problems_of(data)

    assert len(problems) == 1
    assert problems[0].startswith("destinations.ftp: ")
    assert "'dicom', 'folder'" in problems[0]


# --- cross references --------------------------------------------------------------------------


def test_unknown_forward_destinations_are_reported_one_per_line_with_rule_index() -> None:
    data = example()
    data["rules"][0]["forward"] = ["pacs", "pacz"]
    data["rules"][1]["forward"] = ["archiv"]

    with pytest.raises(ConfigError) as info:
        parse_config(data)

    assert info.value.problems == [
        "rules[0].forward: unknown destination 'pacz' (known: archive, pacs)",
        "rules[1].forward: unknown destination 'archiv' (known: archive, pacs)",
    ]
    # The message lists each problem on its own line.
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid config config:"
    assert lines[1:] == [f"  - {p}" for p in info.value.problems]


def test_forward_without_any_destination_defined_says_none_defined() -> None:
    data = example()
    data["destinations"] = {}
    data["rules"] = [{"name": "all", "forward": ["archive"]}]

    problems = problems_of(data)

    assert len(problems) == 1
    assert "rules[0].forward: unknown destination 'archive' (known: none defined)" in problems[0]


def test_single_unknown_forward_destination_is_reported_without_top_level_prefix() -> None:
    data = example()
    data["rules"][1]["forward"] = ["nope"]

    assert problems_of(data) == [
        "rules[1].forward: unknown destination 'nope' (known: archive, pacs)"
    ]


def test_duplicate_rule_names_are_reported() -> None:
    data = example()
    data["rules"][1]["name"] = "ct-from-scanner"

    problems = problems_of(data)

    assert len(problems) == 1
    assert "rules[1].name: duplicate rule name 'ct-from-scanner'" in problems[0]


def test_a_completion_rule_named_with_a_bar_is_refused_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: a completion group is "<rule>|<UID>" in a job's header, read back up to
    the first '|': a completion rule named 'ct|mr' was read back as 'ct' and held nothing.
    check-config, run and a reload (all load_config) refuse the name, naming the rule."""
    data = example()
    data["rules"][0]["name"] = "ct|mr"
    data["rules"][0]["complete"] = {"level": "series", "stable_for": 60}

    problems = problems_of(data)

    assert problems == ["rules[0]: rule name 'ct|mr' contains '|', which a rule with "
                        "`complete` may not hold (its completion groups are joined with it): "
                        "rename the rule"]
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError):
        load_config(config)
    from router.cli.main import main

    assert main(["check-config", str(config)]) == 1
    assert "contains '|'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ct|mr", "site=a"])
def test_other_rule_names_may_hold_any_character(name: str) -> None:
    """Only a completion rule's name is joined with '|'; a route "<destination>=<rule>"
    splits at the first '=' and a destination name has none: no upgrade refuses these."""
    data = example()
    data["rules"][0]["name"] = name

    assert parse_config(data).rules[0].name == name


def test_empty_rules_are_an_error() -> None:
    data = example()
    data["rules"] = []

    problems = problems_of(data)

    assert len(problems) == 1
    assert "rules: at least one rule is needed" in problems[0]


# --- value checks ------------------------------------------------------------------------------


def test_unknown_dicom_keyword_in_match_tags() -> None:
    data = example()
    data["rules"][0]["match"]["tags"]["Modalty"] = "CT"

    assert problems_of(data) == [
        "rules[0].match.tags: 'Modalty' is not a DICOM keyword (e.g. Modality)"
    ]


@pytest.mark.parametrize(("keyword", "why"), [
    ("TransferSyntaxUID", "file meta information (group 0002) is not read by rules; no rule "
                          "matches on a transfer syntax"),
    ("MediaStorageSOPClassUID", "file meta information (group 0002) is not read by rules; "
                                "use match.sop_class"),
    ("PixelData", "the pixel data, and what follows it, is not read by rules: it cannot be "
                  "matched"),
    ("FloatPixelData", "binary data (OF) cannot be matched: rules compare text"),
    ("EncapsulatedDocument", "binary data (OB) cannot be matched: rules compare text"),
    ("ReferencedImageSequence", "a sequence cannot be matched as a whole; match an attribute "
                                "outside it (rules read the top level only)"),
])
def test_match_tags_that_could_never_match_are_refused(keyword: str, why: str) -> None:
    """Regression: rules on file meta keywords, pixel data or a sequence passed check-config
    and never matched (the reader skips group 0002 and the pixel data; a sequence matched
    pydicom's printed form), silently routing those instances elsewhere."""
    data = example()
    data["rules"][0]["match"]["tags"][keyword] = "re:."

    assert problems_of(data) == [f"rules[0].match.tags: tag {keyword}: {why}"]


@pytest.mark.parametrize("value", ["re:(", ["MR", "re:[a-"]])
def test_bad_regular_expression_in_match_tags(value: Any) -> None:
    data = example()
    data["rules"][0]["match"]["tags"]["Modality"] = value

    problems = problems_of(data)

    assert len(problems) == 1
    assert problems[0].startswith("rules[0].match.tags: tag Modality: bad regular expression")


@pytest.mark.parametrize("key", ["calling_ae", "called_ae", "sop_class"])
@pytest.mark.parametrize("value", ["re:(?P<x", "re:[", "re:*x", ["re:^1", "re:[a-"]])
def test_bad_regular_expression_in_match_ae_titles_and_sop_class(key: str, value: Any) -> None:
    # Only tags were compiled at load: a bad pattern elsewhere passed check-config and then
    # crash-looped the acceptor (and a reload was reported applied while it failed).
    data = example()
    data["rules"][0]["match"][key] = value

    problems = problems_of(data)

    assert len(problems) == 1
    assert problems[0].startswith(f"rules[0].match.{key}: bad regular expression 're:")


@pytest.mark.parametrize(("where", "value", "why"), [
    ("tags", "re:a{4294967296}", "the repetition number is too large"),
    ("tags", "re:" + "(" * 2000 + "a" + ")" * 2000, "groups nested too deeply"),
    ("calling_ae", "re:a{4294967296}", "the repetition number is too large"),
    ("called_ae", "re:" + "(" * 2000 + "a" + ")" * 2000, "groups nested too deeply"),
])
def test_a_regular_expression_python_refuses_otherwise_than_re_error(
        where: str, value: str, why: str) -> None:
    """Regression: OverflowError and RecursionError escaped validation as tracebacks from
    check-config and run, and a reload with such a pattern stopped the running router."""
    data = example()
    if where == "tags":
        data["rules"][0]["match"]["tags"]["StudyDescription"] = value
    else:
        data["rules"][0]["match"][where] = value

    problems = problems_of(data)

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"rules[0].match.{where}: "), problems
    assert "bad regular expression" in problems[0] and why in problems[0], problems


def test_a_morph_pattern_python_refuses_otherwise_than_re_error() -> None:
    data = example()
    data["rules"][0]["morph"] = [{"action": "replace", "tag": "StudyDescription",
                                  "pattern": "a{4294967296}", "replacement": "b"}]

    problems = problems_of(data)

    assert len(problems) == 1 and "the repetition number is too large" in problems[0], problems


def test_good_regular_expressions_in_match_ae_titles_and_sop_class_are_kept() -> None:
    data = example()
    data["rules"][0]["match"].update(calling_ae="re:^CT[0-9]$", sop_class=["re:^1\\.2\\."])

    match = parse_config(data).rules[0].match

    assert (match.calling_ae, match.sop_class) == ("re:^CT[0-9]$", ["re:^1\\.2\\."])


@pytest.mark.parametrize("title", ["A" * 17, "A\\B", "   ", "", "AE\x01", "AE\x7f", "AÉ"])
def test_invalid_router_ae_title(title: str) -> None:
    data = example()
    data["ae_title"] = title

    problems = problems_of(data)

    assert len(problems) == 1
    assert problems[0].startswith("ae_title: ")
    assert "is not a valid AE title" in problems[0]


def test_sixteen_character_ae_title_is_valid() -> None:
    data = example()
    data["ae_title"] = "A" * 16

    assert parse_config(data).ae_title == "A" * 16


@pytest.mark.parametrize(("field", "title"), [("ae_title", "P" * 17), ("calling_ae", "CT\\1")])
def test_invalid_destination_ae_titles(field: str, title: str) -> None:
    data = example()
    data["destinations"]["pacs"][field] = title

    problems = problems_of(data)

    assert len(problems) == 1
    assert problems[0].startswith(f"destinations.pacs.{field}: ")
    assert "is not a valid AE title" in problems[0]


@pytest.mark.parametrize(("key", "value", "where"), [
    ("allowed_calling_ae", ["CT1", "EVIL\nCT"], "listen.allowed_calling_ae"),
    ("allowed_called_ae", ["A\\B"], "listen.allowed_called_ae"),
    ("tls", {"ae_titles": {"ct.example": ["CT\x1b"]}}, "listen.tls.ae_titles"),
])
def test_listen_ae_title_lists_hold_valid_ae_titles(key: str, value: Any, where: str) -> None:
    # The acceptor refuses such titles from a peer: an entry holding one never matched.
    data = example()
    data["listen"][key] = value

    problems = problems_of(data)

    assert len(problems) == 1
    assert problems[0].startswith(where)
    assert "is not a valid AE title" in problems[0]


def test_listen_ae_title_lists_are_stripped_of_padding() -> None:
    data = example()
    data["listen"]["allowed_calling_ae"] = [" CT1 "]

    assert parse_config(data).listen.allowed_calling_ae == ["CT1"]


def test_extra_storage_classes_are_uids() -> None:
    data = example()
    data["listen"]["extra_storage_classes"] = ["1.3.12.2.1107.5.9.1"]
    assert parse_config(data).listen.extra_storage_classes == ["1.3.12.2.1107.5.9.1"]


@pytest.mark.parametrize("value", [["SiemensCSANonImageStorage"], ["1.3.12.2.1107.5.9.1\n"],
                                   ["1.02.3"], ["1." + "2" * 70], ["1.2.3"] * 1001])
def test_extra_storage_classes_that_are_no_uids_or_too_many_are_refused(value: Any) -> None:
    data = example()
    data["listen"]["extra_storage_classes"] = value

    problems = problems_of(data)

    assert len(problems) == 1 and problems[0].startswith("listen.extra_storage_classes")
    assert "is not a SOP class UID" in problems[0] or "at most 1000" in problems[0]


@pytest.mark.parametrize("source", ["10.0.0.0/33", "not-a-network", ["10.0.0.0/8", "10.0.0/"]])
def test_bad_cidr_in_source_is_reported_under_match_source(source: Any) -> None:
    data = example()
    data["rules"][0]["match"]["source"] = source

    problems = problems_of(data)

    assert all(p.startswith("rules[0].match.source") for p in problems)


def test_bad_cidr_in_source_is_one_problem_with_a_clean_key_path() -> None:
    data = example()
    data["rules"][0]["match"]["source"] = "10.0.0.0/33"

    problems = problems_of(data)

    assert paths_of(problems) == ["rules[0].match.source"]


@pytest.mark.parametrize("name", ["a/b", "../etc", "has space", "x" * 65, ""])
def test_unsafe_destination_names_are_rejected(name: str) -> None:
    data = example()
    data["destinations"][name] = {"type": "folder", "path": "/x"}

    problems = problems_of(data)

    assert problems == [f"destinations: destination name {name!r}: use letters, digits, - and _"]


DURATIONS = [
    "drain_grace", "request_timeout", "listen.tls.handshake_timeout", "listen.submit_timeout",
    "listen.acse_timeout", "listen.dimse_timeout", "listen.network_timeout",
    "listen.association_request_timeout", "spool.duplicate_window", "metrics.request_timeout",
    "console.login_window", "console.session_minutes", "destinations.pacs.connect_timeout",
    "destinations.pacs.acse_timeout", "destinations.pacs.dimse_timeout",
    "destinations.pacs.idle_timeout", "destinations.pacs.busy_timeout",
    "destinations.pacs.probe_interval", "destinations.pacs.fallback_after",
    "destinations.pacs.retry.initial_delay", "destinations.pacs.retry.max_delay",
    "destinations.web.timeout", "rules[0].complete.stable_for", "rules[0].complete.deadline",
]


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "")
            .split(".")]
    for key in keys[:-1]:
        data = data[key] if isinstance(key, int) else data.setdefault(key, {})
    data[keys[-1]] = value


@pytest.mark.parametrize("value", [float("inf"), 1e308])
@pytest.mark.parametrize("path", DURATIONS)
def test_every_duration_is_finite_and_bounded(path: str, value: float) -> None:
    # `.inf` passed before and broke at use: network_timeout in sock.settimeout killed every
    # association, dimse_timeout or drain_grace crashed the supervisor's SIGTERM handling.
    data = example()
    data["destinations"]["web"] = {"type": "dicomweb", "url": "https://pacs.example.org/dw"}
    _set(data, path, value)

    problems = [p for p in problems_of(data) if p.startswith(f"{path}: ")]

    assert len(problems) == 1
    assert "must be at most " in problems[0] and "day" in problems[0]



FLOATS = [*DURATIONS, "queue.linger", "spool.min_free_percent", "audit.syslog.timeout"]


@pytest.mark.parametrize("path", FLOATS)
def test_nan_is_called_not_a_number_not_out_of_range(path: str) -> None:
    # YAML's .nan fails every comparison: pydantic said "greater than 0" or "less than or
    # equal to 1", as if the number were merely too small or too large.
    data = example()
    data["destinations"]["web"] = {"type": "dicomweb", "url": "https://pacs.example.org/dw"}
    data["audit"] = {"syslog": {"host": "h", "transport": "udp"}}
    _set(data, path, float("nan"))

    problems = [p for p in problems_of(data) if p.startswith(f"{path}: ")]

    assert problems == [f"{path}: is .nan (not a number): give a finite number"]


@pytest.mark.parametrize(("path", "value", "said"), [
    ("queue.linger", float("inf"), ".inf"), ("spool.min_free_percent", float("inf"), ".inf"),
    ("drain_grace", float("-inf"), "-.inf"), ("listen.dimse_timeout", float("-inf"), "-.inf"),
    ("workers", float("inf"), ".inf"), ("audit.syslog.timeout", float("inf"), ".inf"),
])
def test_infinity_where_no_bound_says_so_is_called_not_finite(
        path: str, value: float, said: str) -> None:
    data = example()
    data["audit"] = {"syslog": {"host": "h", "transport": "udp"}}
    _set(data, path, value)

    problems = [p for p in problems_of(data) if p.startswith(f"{path}: ")]

    assert problems == [f"{path}: must be a finite number, not {said}"]

def test_a_day_is_a_valid_timeout() -> None:
    data = example()
    data["listen"]["network_timeout"] = 86400

    assert parse_config(data).listen.network_timeout == 86400


@pytest.mark.parametrize("name", [1, 2.5, True])
def test_a_destination_name_yaml_reads_as_a_number_says_to_quote_it(name: Any) -> None:
    # `destinations: {1: ...}` with `forward: ['1']` was a TypeError traceback (sorting the
    # names for a message) in check-config, run and dead-letters.
    data = example()
    data["destinations"] = {name: {"type": "folder", "path": "/x"}}
    data["rules"] = [{"name": "all", "forward": [str(name)]}]

    assert problems_of(data) == [f"destinations: destination name {name!r} is read as a number "
                                 "(or another non-string): names must be strings, so quote it "
                                 f"('{name}': ...)"]



NUMBER_KEY = "key 1 is read as a number: keys must be names (strings), so quote it ('1': ...)"


@pytest.mark.parametrize(("text", "where"), [
    ("known_aes: {1: {host: h, port: 104}}", "known_aes"),
    ("listen: {tls: {ae_titles: {1: [A]}}}", "listen.tls.ae_titles"),
    ("listen: {1: 2}", "listen"),
    ("1: 2", "(top level)"),
    ("rules: [{name: all, forward: [archive], match: {tags: {1: CT}}}]", "rules[0].match.tags"),
    ("rules: [{name: all, forward: [archive], match: {1: CT}}]", "rules[0].match"),
    ("rules: [{name: all, forward: [archive], 1: 2}]", "rules[0]"),
])
def test_a_key_yaml_reads_as_a_number_is_named_with_its_place(text: str, where: str) -> None:
    # pydantic said "known_aes[1]: Input should be a valid string" (as if 1 were a list
    # index) or "listen[1]: Keys should be strings".
    data = example()
    data.update(yaml.safe_load(text))

    assert problems_of(data) == [f"{where}: {NUMBER_KEY}"]


@pytest.mark.parametrize(("text", "said"), [
    ("yes: 2", "a key is read as true/false (yes, no, on, off...): keys must be names "
               "(strings), so quote it"),
    ("~: 2", "a key is read as null (~ or null): keys must be names (strings), so quote it"),
    ("2024-01-01: 2", "key 2024-01-01 is read as a date: keys must be names (strings), so "
                      "quote it ('2024-01-01': ...)"),
])
def test_other_keys_yaml_does_not_read_as_strings_say_what_yaml_read(text: str, said: str) -> None:
    data = example()
    data["listen"].update(yaml.safe_load(text))

    assert problems_of(data) == [f"listen: {said}"]

def test_a_number_as_a_fallback_destination_name_is_reported_not_a_traceback() -> None:
    data = example()
    data["destinations"][1] = {"type": "folder", "path": "/x"}
    data["destinations"]["archive"]["fallback"] = ["nowhere"]

    assert paths_of(problems_of(data)) == ["destinations", "destinations.archive.fallback"]


def test_out_of_range_numbers_name_their_key() -> None:
    data = example()
    data["listen"]["port"] = 70000
    data["workers"] = 0

    assert sorted(paths_of(problems_of(data))) == ["listen.port", "workers"]



# Every integer setting has a ceiling (router/core/bounds.py): a typo is refused at load with
# the allowed range, not taken (shared tables preallocated from it, threads started, or the
# backoff's 2.0 ** attempts overflowing in the broker).
CEILINGS = [
    ("workers", 1, 64), ("worker_threads", 1, 64), ("listen.acceptors", 1, 64),
    ("listen.max_associations", 1, 10_000), ("listen.max_associations_per_calling_ae", 1, 10_000),
    ("listen.max_associations_per_source", 1, 10_000), ("listen.max_pending", 1, 10_000),
    ("listen.max_pending_per_source", 1, 10_000), ("listen.backlog", 1, 65535),
    ("listen.max_dataset_bytes", 1, 1024**4), ("listen.max_message_bytes", 65536, 1024**3),
    ("spool.min_free_bytes", 0, 1024**5), ("queue.max_jobs", 1, 10_000_000),
    ("queue.max_bytes", 1, 1024**5), ("metrics.max_connections", 1, 1024),
    ("metrics.max_connections_per_source", 1, 1024),
    ("destinations.pacs.max_parallel", 1, 256), ("destinations.archive.max_parallel", 1, 256),
    ("destinations.pacs.max_associations", 1, 256),
    ("destinations.pacs.retry.max_attempts", 1, 1000), ("console.login_failures", 1, 1000),
]


@pytest.mark.parametrize(("path", "low", "high"), CEILINGS)
def test_every_count_has_a_ceiling_and_the_message_gives_the_range(
        path: str, low: int, high: int) -> None:
    data = example()
    _set(data, path, high)
    parse_config(data)  # the ceiling itself is allowed
    _set(data, path, high + 1)

    problems = [p for p in problems_of(data) if p.startswith(f"{path}: ")]

    assert problems == [f"{path}: must be between {low} and {high}, not {high + 1}"]


def test_a_typo_in_max_parallel_is_refused_naming_it() -> None:
    data = example()
    data["destinations"]["pacs"]["max_parallel"] = 100_000_000

    assert problems_of(data) == ["destinations.pacs.max_parallel: must be between 1 and 256, "
                                 "not 100000000"]

# --- several problems at once ------------------------------------------------------------------


def test_all_field_problems_are_listed_at_once() -> None:
    data = example()
    data["ae_titl"] = "X"
    data["ae_title"] = "A" * 17
    data["listen"]["prot"] = 1
    data["destinations"]["pacs"]["port"] = 0
    data["rules"][0]["match"]["tags"]["Modalty"] = "CT"
    data["rules"][1]["continu"] = True

    problems = problems_of(data)

    assert sorted(paths_of(problems)) == sorted(
        [
            "ae_titl",
            "ae_title",
            "listen.prot",
            "destinations.pacs.port",
            "rules[0].match.tags",
            "rules[1].continu",
        ]
    )


def test_field_problems_and_unknown_forward_destinations_are_listed_together() -> None:
    data = example()
    data["listen"]["prot"] = 1
    data["rules"][0]["forward"] = ["pacs", "pacz"]

    problems = problems_of(data)

    assert "listen.prot: unknown key" in problems
    assert any(p.startswith("rules[0].forward: unknown destination 'pacz'") for p in problems)


# --- parse_config input shapes and load_config -------------------------------------------------


@pytest.mark.parametrize("data", [[1, 2], "text", 3])
def test_parse_config_rejects_a_non_mapping(data: Any) -> None:
    assert problems_of(data) == ["(top level): must be a mapping of keys to values"]


def test_parse_config_source_names_the_file_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"ae_titl": "x"}, "site.yaml")

    assert info.value.source == "site.yaml"
    assert str(info.value).startswith("invalid config site.yaml:\n")


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.source == str(path)
    assert info.value.problems == ["cannot read the file: No such file or directory"]


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("rules: [\n  - name: x\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.source == str(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("not valid YAML: ")


def test_load_config_empty_file_reports_missing_rules(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert any("at least one rule is needed" in p for p in info.value.problems)


def test_load_config_reports_problems_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(EXAMPLE_YAML + "bogus: 1\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.problems == ["bogus: unknown key"]
    assert str(info.value) == f"invalid config {path}:\n  - bogus: unknown key"


def test_load_config_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("ae_title: RÖNTGEN\n".encode("latin-1"))

    with pytest.raises(ConfigError):
        load_config(path)


# --- values that parse but can never work --------------------------------------------------


@pytest.mark.parametrize("end", ["00:00", "00:00:00"])
def test_a_window_whose_start_is_its_end_is_refused(end: str) -> None:
    data = example()
    data["destinations"]["archive"]["window"] = {"start": "00:00", "end": end}
    assert problems_of(data) == ["destinations.archive.window: start and end are equal (an "
                                 "empty window); leave window out for always"]


def test_a_window_across_midnight_is_still_valid() -> None:
    data = example()
    data["destinations"]["archive"]["window"] = {"start": "20:00", "end": "06:00"}
    assert parse_config(data).destinations["archive"].window is not None


@pytest.mark.parametrize(("destination", "key", "value", "message"), [
    ("archive", "path", "", "empty: give the folder to write into"),
    ("pacs", "host", "", "empty: give the destination's host name or address"),
    ("pacs", "host", "  ", "empty: give the destination's host name or address"),
])
def test_an_empty_path_or_host_is_refused(destination: str, key: str, value: str,
                                          message: str) -> None:
    data = example()
    data["destinations"][destination][key] = value
    assert problems_of(data) == [f"destinations.{destination}.{key}: {message}"]


def test_an_empty_known_ae_host_is_refused() -> None:
    data = example()
    data["known_aes"] = {"VIEWER": {"host": "", "port": 104}}
    assert problems_of(data) == ["known_aes.VIEWER.host: empty: give its host name or address"]


HOST_KEYS = {  # where each host key goes, from the example config
    "listen.host": lambda data, host: data["listen"].update(host=host),
    "metrics.host": lambda data, host: data["metrics"].update(host=host),
    "console.host": lambda data, host: data.update(console={"host": host}),
    "destinations.pacs.host": lambda data, host: data["destinations"]["pacs"].update(host=host),
    "known_aes.VIEWER.host": lambda data, host: data.update(
        known_aes={"VIEWER": {"host": host, "port": 104}}),
    "audit.syslog.host": lambda data, host: data.update(
        audit={"syslog": {"host": host, "transport": "udp"}}),
}


@pytest.mark.parametrize("key", HOST_KEYS)
@pytest.mark.parametrize(("host", "message"), [
    ("[::1]", "'[::1]': write an IPv6 address without brackets (::1)"),
    ("::1::2", "'::1::2' is not an IPv6 address, and a host name holds no ':' (a port goes "
               "in `port`)"),
    ("pacs.example.org:104", "'pacs.example.org:104' is not an IPv6 address, and a host name "
                             "holds no ':' (a port goes in `port`)"),
])
def test_a_host_no_resolver_takes_is_refused(key: str, host: str, message: str) -> None:
    """A bracketed IPv6 address resolves to nothing: a destination so written was retried
    for ever ("Name or service not known") after check-config said ok."""
    data = example()
    HOST_KEYS[key](data, host)
    assert problems_of(data) == [f"{key}: {message}"]


@pytest.mark.parametrize("key", HOST_KEYS)
@pytest.mark.parametrize("host", ["::1", "::", "fe80::1%eth0", "::ffff:10.0.0.1",
                                  "pacs.example.org", "10.0.0.1"])
def test_an_ipv6_address_or_a_name_is_a_host(key: str, host: str) -> None:
    data = example()
    HOST_KEYS[key](data, host)
    parse_config(data)


@pytest.mark.parametrize("change", [
    lambda data: data.update(ae_title="A" * 100_000),
    lambda data: data.update({"B" * 100_000: 1}),
    lambda data: data["rules"][1].update(forward=["c" * 100_000]),
    lambda data: data["destinations"].update({"d" * 100_000: {"type": "folder", "path": "/x"}}),
    lambda data: data["destinations"]["pacs"].update(transfer_syntaxes=["e" * 100_000]),
])
def test_a_huge_bad_value_is_echoed_cut_short(change: Any) -> None:
    """A 100,000-character AE title made a 100 KB error line."""
    data = example()
    change(data)
    problems = problems_of(data)
    assert all(len(p) < 400 for p in problems), [len(p) for p in problems]
    assert any("..." in p for p in problems), problems


@pytest.mark.parametrize(("extra", "problem"), [
    ({"metrics": {"port": 11112}}, "metrics.port: 11112 is also listen.port on the same host"),
    ({"metrics": {"host": "0.0.0.0", "port": 11112}, "listen": {"host": "127.0.0.1"}},
     "metrics.port: 11112 is also listen.port on the same host"),
    ({"console": {"enabled": True, "port": 9100, "token_file": "/t"}},
     "console.port: 9100 is also metrics.port on the same host"),
    ({"console": {"enabled": True, "port": 11112, "token_file": "/t"}},
     "console.port: 11112 is also listen.port on the same host"),
])
def test_two_listeners_on_one_port_are_refused(extra: dict[str, Any], problem: str) -> None:
    data = {**example(), **extra}
    assert [p for p in problems_of(data) if "port" in p] == \
        [f"{problem}: give each its own port"]


@pytest.mark.parametrize("extra", [
    {"metrics": {"port": 11112, "enabled": False}},
    {"metrics": {"port": 11112, "host": "10.0.0.1"}, "listen": {"host": "127.0.0.1"}},
    {"console": {"enabled": False, "port": 9100}},
])
def test_one_port_on_different_hosts_or_unused_is_fine(extra: dict[str, Any]) -> None:
    parse_config({**example(), **extra})
