"""README.md and docs/ against the repository: every path they name exists, every relative
link resolves.

Regression: docs/benchmark.md linked `chart.png`, a file of a results folder git ignores,
and docs/configuration.md named `workers/folder_destination.py`, moved to
`workers/destinations/folder.py`."""

from __future__ import annotations

import re
from pathlib import Path

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

