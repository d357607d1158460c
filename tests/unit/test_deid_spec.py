"""The `deidentify:` config (router/core/deid_spec.py): what it rejects, how it reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from router.core.deid_spec import DeidentifyConfig


@pytest.mark.parametrize("bad", [
    {"uid_root": "2.25."}, {"uid_root": "01.2"}, {"uid_root": 2.25}, {"uid_root": "1." + "2" * 42},
    {"keep": ["NotAKeyword"]}, {"profile": "enhanced"}, {"private_tags": "safe"},
    {"patient_id": "a\\b"}, {"patient_name": ""}, {"retain_uid": True},
    # written into datasets of any character set (or none): pydicom would write '?' or
    # undeclared bytes into one that cannot encode it
    {"patient_name": "Anonymisé"}, {"patient_id": "山田-1"},
])
def test_config_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DeidentifyConfig(**bad)  # type: ignore[arg-type]


def test_config_is_frozen_and_reads_yaml_shapes() -> None:
    config = DeidentifyConfig.model_validate({
        "retain_dates": True, "uid_root": "1.2.826.0.1.3680043.10.543",
        "keep": ["PatientSex", "(0018,1030)", "00181030"], "private_tags": "keep"})
    with pytest.raises(ValidationError):
        config.retain_uids = True  # type: ignore[misc]
    assert config.profile == "basic" and config.keep[0] == "PatientSex"


def test_the_config_module_does_not_import_pydicom_at_the_top() -> None:
    source = Path(__file__).parents[2] / "router" / "core" / "deid_spec.py"
    tree = ast.parse(source.read_text())
    names = [alias.name for node in tree.body if isinstance(node, ast.Import)
             for alias in node.names]
    names += [node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert not any(name.startswith("pydicom") for name in names)
    assert not any(name == "router.core.config" for name in names)
