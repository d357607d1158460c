"""`console:` in the router's config. Off unless configured; 127.0.0.1 by default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.core.bounds import between
from router.core.durations import DAY, MINUTE, Seconds, at_most
from router.core.hosts import Host

# argon2-cffi's encoded hash, e.g. from `dicom-router hash-password`.
ARGON2_HASH = r"^\$argon2(id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$"
Role = Literal["viewer", "operator"]


class ConsoleUser(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password_hash: str = Field(pattern=ARGON2_HASH)
    # viewer: reads every page; operator: also acts (pause, drain, replay, purge, ...).
    role: Role = "viewer"


class ConsoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    # Unset: served on the metrics port (metrics.host). Set: its own port on `host`.
    port: int | None = Field(None, ge=1, le=65535)
    host: Host = "127.0.0.1"
    # HTTPS on its own port, with the router's TLS machinery (router/core/tls.py).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_key_password_file: Path | None = None
    users: list[ConsoleUser] = []
    # A file holding a bearer token (Authorization: Bearer ...), for scripts; its role:
    token_file: Path | None = None
    token_role: Role = "viewer"
    session_minutes: Annotated[float, at_most(7 * DAY / MINUTE, "minutes", "7 days")] = Field(
        60.0, gt=0)  # a session ends this long after login
    # Past this many failed logins from one address within `login_window` seconds, further
    # attempts from it are refused until the window has passed.
    login_failures: Annotated[int, between(1, 1000)] = 5
    login_window: Seconds = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _usable(self) -> ConsoleConfig:
        if self.enabled and not self.users and self.token_file is None:
            raise ValueError("an enabled console needs users (with password_hash from "
                             "`dicom-router hash-password`) or a token_file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert is not None and self.port is None:
            raise ValueError("TLS needs the console's own port: set port (the metrics port "
                             "is plain HTTP)")
        names = [u.username for u in self.users]
        if len(names) != len(set(names)):
            raise ValueError("users: a username appears twice")
        return self
