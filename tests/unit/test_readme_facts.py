"""README.md and docs/ against the repository: every path they name exists, every relative
link resolves, and the README's metric table is router/core/metrics.py's metrics, with
their types and labels.

Regression: docs/benchmark.md linked `chart.png`, a file of a results folder git ignores,
and docs/configuration.md named `workers/folder_destination.py`, moved to
`workers/destinations/folder.py`."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from router.core import metrics
from router.core.config import RouterConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "ops" / "README.md",
        ROOT / "loadtest" / "README.md"]
# A path the docs name under one of these folders: `router/core/patterns.py`.
_PATH = re.compile(r"(?<![\w./-])((?:router|workers|tests|docs|ops|scripts|loadtest)/"
                   r"[\w.*/-]*[\w*/])")
_LINK = re.compile(r"\]\(([^)#\s]+)")
GENERATED = ("loadtest/results",)  # make bench writes it; git ignores it


def _exists(path: str) -> bool:
    if path.startswith(GENERATED) or (ROOT / path).exists():
        return True
    if "*" in path:
        return any(ROOT.glob(path))
    module, _, _attribute = path.rpartition(".")  # `workers/folder_destination.placement`
    return bool(module) and (ROOT / f"{module}.py").exists()


def test_every_path_the_docs_name_exists() -> None:
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for match in _PATH.finditer(text):
            if not _exists(match.group(1).rstrip(".")):
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{doc.relative_to(ROOT)}:{line}: {match.group(1)}")
    assert not missing, missing


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in DOCS:
        text = doc.read_text()
        for match in _LINK.finditer(text):
            target = match.group(1)
            if "://" not in target and not (doc.parent / target).exists():
                line = text.count("\n", 0, match.start()) + 1
                broken.append(f"{doc.relative_to(ROOT)}:{line}: {target}")
    assert not broken, broken


def _code_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, (Counter, Gauge, Histogram)):
            suffix = "_total" if isinstance(value, Counter) else ""
            found[value._name + suffix] = (type(value).__name__.lower(),
                                           frozenset(value._labelnames))
    return found


def _readme_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """The rows of README's metric table: name(s), type, labels (with their values in
    brackets), meaning. A row may name two metrics, the second by its suffix."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("\n### Metrics\n"):text.index("\n### Alerts and dashboard\n")]
    found = {}
    for row in table.splitlines():
        if not row.startswith("| `dicom_router_"):
            continue
        names, kind, labels = (cell.strip() for cell in row.strip("|").split("|")[:3])
        label_set = frozenset(re.findall(r"`?(\w+)`?(?: \([^)]*\))?(?:,|$)", labels))
        for name in re.findall(r"`(\w+)`", names):
            full = name if name.startswith(metrics.PREFIX) else metrics.PREFIX + name
            found[full] = (kind.split()[0], label_set)
    return found


def test_the_readme_metric_table_is_the_code_metrics() -> None:
    code, readme = _code_metrics(), _readme_metrics()
    assert len(code) > 40
    assert sorted(set(code) - set(readme)) == [], "metrics README does not document"
    assert sorted(set(readme) - set(code)) == [], "metrics README documents that do not exist"
    differ = {name: (readme[name], code[name]) for name in code if readme[name] != code[name]}
    assert differ == {}, "(README's type and labels, the code's)"


def test_every_top_level_config_key_has_a_row_in_the_configuration_reference() -> None:
    """Regression: `audit` had no row in docs/configuration.md's top-level table, which
    README calls the reference of every key."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text[text.index("\n## Top level\n"):text.index("\n## `listen`\n")]
    rows = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert set(RouterConfig.model_fields) - rows == set()
