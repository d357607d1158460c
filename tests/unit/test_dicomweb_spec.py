"""Validation of the DICOMweb destination's config fields (router.dicomweb_spec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from router.core.config import DestinationBase
from router.core.dicomweb_spec import DicomWebFields

URL = "https://pacs.example.org:8443/dicom-web"


def fields(**settings: Any) -> DicomWebFields:
    return DicomWebFields.model_validate({"type": "dicomweb", "url": URL, **settings})


def problem(**settings: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        fields(**settings)
    return str(caught.value)


def test_defaults() -> None:
    spec = fields()
    assert (spec.auth, spec.verify_tls, spec.timeout, spec.ca) == ("none", True, 60.0, None)
    assert spec.url == URL


def test_url_loses_its_final_slash() -> None:
    assert fields(url="http://127.0.0.1:8042/dicom-web/").url == "http://127.0.0.1:8042/dicom-web"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://pacs/dicom-web", "not an http:// or https:// URL"),
        ("pacs.example.org/dicom-web", "not an http:// or https:// URL"),
        ("http:///dicom-web", "has no host"),
        ("https://router:secret@pacs/dicom-web", "must not carry credentials"),
        ("https://pacs/dicom-web?x=1", "without ?query"),
        ("https://pacs:99999/dicom-web", "out of range"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    assert message in problem(url=url)


def test_unknown_keys_are_rejected() -> None:
    assert "password" in problem(auth="basic", username="u", password="plain text")


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        fields().url = "http://elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize("source", [{"password_env": "PACS_PASSWORD"},
                                    {"password_file": "/run/secrets/pacs"}])
def test_basic_auth(source: dict[str, str]) -> None:
    spec = fields(auth="basic", username="router", **source)
    assert spec.username == "router"
    assert spec.password_file in (None, Path("/run/secrets/pacs"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"password_env": "P"}, "auth basic needs username"),
        ({"username": "router"}, "auth basic needs password_env or password_file"),
        ({"username": "router", "password_env": "P", "password_file": "/p"}, "not both"),
        ({"username": "router", "password_env": "P", "token_env": "T"}, "not token_env"),
        ({"username": "", "password_env": "P"}, "at least 1 character"),
        ({"username": "router", "password_env": "NOT-A-NAME"}, "not an environment variable"),
    ],
)
def test_basic_auth_problems(settings: dict[str, str], message: str) -> None:
    assert message in problem(auth="basic", **settings)


@pytest.mark.parametrize("source", [{"token_env": "PACS_TOKEN"},
                                    {"token_file": "/run/secrets/token"}])
def test_bearer_auth(source: dict[str, str]) -> None:
    assert fields(auth="bearer", **source).auth == "bearer"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "auth bearer needs token_env or token_file"),
        ({"token_env": "T", "token_file": "/t"}, "not both"),
        ({"token_env": "T", "username": "router"}, "not username"),
    ],
)
def test_bearer_auth_problems(settings: dict[str, str], message: str) -> None:
    assert message in problem(auth="bearer", **settings)


@pytest.mark.parametrize("key", ["username", "password_env", "token_env", "token_file"])
def test_credentials_without_auth(key: str) -> None:
    assert f"{key} is set but auth is none" in problem(**{key: "X"})


def test_tls_settings() -> None:
    assert fields(ca="/etc/ca.pem").ca == Path("/etc/ca.pem")
    assert fields(verify_tls=False).verify_tls is False
    assert "url is not https://" in problem(url="http://pacs/dicom-web", ca="/etc/ca.pem")
    assert "verify_tls is false" in problem(ca="/etc/ca.pem", verify_tls=False)


def test_timeout_positive() -> None:
    assert "greater than 0" in problem(timeout=0)


class _Composed(DestinationBase, DicomWebFields):
    """How router.config combines these fields with retry and max_parallel."""


def test_composes_with_a_destination_base() -> None:
    spec = _Composed.model_validate({"type": "dicomweb", "url": URL, "max_parallel": 2,
                                     "retry": {"max_attempts": 3}, "auth": "bearer",
                                     "token_env": "T"})
    assert (spec.max_parallel, spec.retry.max_attempts, spec.auth) == (2, 3, "bearer")
    with pytest.raises(ValidationError, match="auth bearer needs"):
        _Composed.model_validate({"type": "dicomweb", "url": URL, "auth": "bearer"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        _Composed.model_validate({"type": "dicomweb", "url": URL, "colour": "blue"})
