"""The DICOM audit message schema and sample UIDs, for the audit tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from router import audit

SCHEMA_PATH = Path(audit.__file__).parent / "schemas" / "audit-message.schema.json"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY = "1.2.826.0.1.3680043.8.498.12345"


def schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def assert_valid(validator: Any, message: dict[str, Any]) -> None:
    errors = sorted(validator.iter_errors(message), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
