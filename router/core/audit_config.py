"""The `audit:` section of the config: the audit trail's file and its syslog server.

Models only (validated by pydantic like the rest of the config); router/audit/ writes and
sends the messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.core.hosts import Host

Transport = Literal["udp", "tcp", "tls"]
DEFAULT_PORTS: dict[str, int] = {"udp": 514, "tcp": 514, "tls": 6514}  # 6514: RFC 5425


class SyslogConfig(BaseModel):
    """Where audit messages go besides the JSON lines file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: Host
    # Default: 514 for udp and tcp, 6514 for tls.
    port: int | None = Field(None, ge=1, le=65535)
    transport: Transport
    # PEM CA bundle the server certificate must chain to (tls only; default: the system's).
    ca: Path | None = None
    # Client certificate and key (PEM) for servers that require mutual TLS.
    cert: Path | None = None
    key: Path | None = None
    app_name: str = "dicom-router"
    # 10 = security/authorization (authpriv), as IHE ATNA and DICOM A.6 use.
    facility: int = Field(10, ge=0, le=23)
    # Messages waiting for the server; past this the oldest are dropped (and counted).
    queue_size: int = Field(1000, ge=1, le=1_000_000)
    # Connect and send timeout, seconds.
    timeout: float = Field(5.0, gt=0, le=300)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not a host name or address")
        return value

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, value: str) -> str:
        if not 1 <= len(value) <= 48 or any(not 33 <= ord(c) <= 126 for c in value):
            raise ValueError("app_name: 1-48 printable ASCII characters without spaces (RFC 5424)")
        return value

    @field_validator("ca", "cert", "key")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @model_validator(mode="after")
    def _tls_only(self) -> SyslogConfig:
        given = [name for name in ("ca", "cert", "key") if getattr(self, name) is not None]
        if given and self.transport != "tls":
            raise ValueError(f"{', '.join(given)} apply only to transport: tls")
        if self.key is not None and self.cert is None:
            raise ValueError("key needs cert (the client certificate it belongs to)")
        return self

    @property
    def resolved_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.transport]


class AuditConfig(BaseModel):
    """`audit:` in the router's config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    # The JSON lines file: one audit message per line, appended (created with mode 0640).
    path: Path = Path("audit.jsonl")
    # fsync after every message: slower, but a message is on disk once the call returns.
    fsync: bool = False
    # AuditSourceID; None means the router's AE title.
    source_id: str | None = None
    # AuditEnterpriseSiteID, e.g. the hospital or department.
    enterprise_site_id: str | None = None
    # Also send every message to a syslog server (RFC 5424).
    syslog: SyslogConfig | None = None
    # MSG of the syslog messages: the same JSON as the file, or the A.5.1 XML that
    # DICOM/IHE audit record repositories expect.
    syslog_format: Literal["json", "xml"] = "json"

    @field_validator("path")
    @classmethod
    def _file_path(cls, value: Path) -> Path:
        if not str(value).strip():
            raise ValueError("give the audit file, e.g. /var/log/dicom-router/audit.jsonl")
        if value.is_dir():
            raise ValueError(f"{value} is a directory; give a file such as {value / 'audit.jsonl'}")
        return value

    @field_validator("source_id", "enterprise_site_id")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip() or len(value) > 256 or any(ord(c) < 32 for c in value):
            raise ValueError(f"{value!r}: use 1-256 characters without control characters")
        return " ".join(value.split())
