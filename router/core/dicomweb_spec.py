"""The config fields of a DICOMweb (STOW-RS) destination.

router.config composes the destination model from these fields and its DestinationBase
(retry, max_parallel): ``class DicomWebDestination(DestinationBase, DicomWebFields)``. This
module does not import router.config, so that config.py can import it.

Secrets never sit in the config: a password or token comes from an environment variable or a
file (a mounted secret), read when a request is sent, so a rotated token is picked up.

    destinations:
      pacs-web:
        type: dicomweb
        url: https://pacs.example.org/dicom-web   # the service root; STOW-RS is <url>/studies
        auth: basic                              # none | basic | bearer
        username: router
        password_env: PACS_WEB_PASSWORD          # or password_file: /run/secrets/pacs-web
        ca: /etc/router/pacs-ca.pem              # verify https against this bundle
        timeout: 60                              # seconds for the whole request and answer
        max_answer_bytes: 16777216               # a longer answer pauses the destination
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.core.durations import Seconds

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BASIC_KEYS = ("username", "password_env", "password_file")
_BEARER_KEYS = ("token_env", "token_file")
MAX_ANSWER_BYTES = 16 * 1024**2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: str) -> str:
    """An http(s) service root with a host, no credentials, query or fragment; no final /."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL must not carry credentials: use auth with username and "
                         "password_env or password_file")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: give the service root, without ?query or #fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    return value.strip().rstrip("/")


def _given(model: BaseModel, keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if getattr(model, k) is not None]


class DicomWebFields(_Strict):
    """Where and how to STOW-RS instances; see the module docstring for the YAML shape."""

    type: Literal["dicomweb"]
    # The DICOMweb service root (e.g. http://host:8042/dicom-web); instances go to <url>/studies.
    url: str
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = Field(None, min_length=1)
    # Where the basic-auth password comes from: one of the two, never the password itself.
    password_env: str | None = None
    password_file: Path | None = None
    # Where the bearer token comes from: one of the two.
    token_env: str | None = None
    token_file: Path | None = None
    # CA bundle to verify an https service against (default: the system's trust store).
    ca: Path | None = None
    verify_tls: bool = True
    # Seconds for the whole exchange: connect, send the instance, read the whole answer.
    timeout: Seconds = Field(60.0, gt=0)
    # The most of an answer the worker reads (a STOW-RS answer for one instance is a few KB):
    # a longer one, or an endless one, is cut off, so a worker's memory stays bounded.
    max_answer_bytes: int = Field(MAX_ANSWER_BYTES, ge=1024)

    _url = field_validator("url")(_check_url)

    @field_validator("password_env", "token_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an environment variable name (e.g. PACS_TOKEN)")
        return value

    @model_validator(mode="after")
    def _credentials_match_auth(self) -> DicomWebFields:
        basic, bearer = _given(self, _BASIC_KEYS), _given(self, _BEARER_KEYS)
        if self.auth == "none" and (basic or bearer):
            raise ValueError(f"{(basic + bearer)[0]} is set but auth is none: "
                             "set auth to basic or bearer")
        if self.auth == "basic":
            _check_basic(self, basic, bearer)
        if self.auth == "bearer":
            if basic:
                raise ValueError(f"auth bearer takes token_env or token_file, not {basic[0]}")
            _one_source(bearer, "auth bearer", "token_env or token_file")
        return self

    @model_validator(mode="after")
    def _tls_settings(self) -> DicomWebFields:
        if self.ca is not None and not self.url.startswith("https:"):
            raise ValueError("ca verifies an https service, but url is not https://")
        if self.ca is not None and not self.verify_tls:
            raise ValueError("ca is set but verify_tls is false: remove one of them")
        return self


def _check_basic(fields: DicomWebFields, basic: list[str], bearer: list[str]) -> None:
    if bearer:
        raise ValueError(f"auth basic takes username and a password source, not {bearer[0]}")
    if fields.username is None:
        raise ValueError("auth basic needs username")
    _one_source([k for k in basic if k != "username"], "auth basic",
                "password_env or password_file")


def _one_source(given: list[str], what: str, choices: str) -> None:
    if not given:
        raise ValueError(f"{what} needs {choices}")
    if len(given) > 1:
        raise ValueError(f"{what}: give {choices}, not both")
