"""The router's one validated config model. Unknown keys are errors that name the key."""

from __future__ import annotations

import io
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router.core.audit_config import AuditConfig
from router.core.console_config import ConsoleConfig
from router.core.deid_spec import DeidentifyConfig
from router.core.dicomweb_spec import DicomWebFields
from router.core.errors import ConfigError
from router.core.fallback_spec import fallback_problems
from router.core.morph_spec import MorphAction

DEFAULT_MAX_PDU = 262_144  # 16 KB (pynetdicom's default) halves throughput; 0 would buffer all


def _check_ae_title(value: str) -> str:
    # PS3.5: AE is at most 16 characters, no backslash or control characters, not all spaces.
    if not value.strip() or len(value) > 16 or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{value!r} is not a valid AE title (1-16 characters, no backslash)")
    return value.strip()


AETitle = Annotated[str, Field(min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_networks(value: Any) -> Any:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    for item in items:
        try:
            ipaddress.ip_network(str(item), strict=True)
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a CIDR network ({exc})") from None
    return [str(item) for item in items]


class TLSBase(Strict):
    mode: Literal["off", "tls", "mtls"] = "off"
    cert: Path | None = None
    key: Path | None = None
    # Where an encrypted key's password comes from: never the command line, never a prompt.
    key_password_file: Path | None = None
    key_password_env: str | None = None
    key_password_command: list[str] | None = None  # e.g. a vault client; its stdout
    ca: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are always the safe defaults).
    ciphers: str = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM"

    @model_validator(mode="after")
    def _one_password_source(self) -> TLSBase:
        given = [k for k in ("key_password_file", "key_password_env", "key_password_command")
                 if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one key password source, not {' and '.join(given)}")
        if given and self.key is None:
            raise ValueError(f"{given[0]} is set but there is no key")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class ListenerTLS(TLSBase):
    """tls: the router presents `cert`; mtls: clients must present a certificate from `ca`."""

    handshake_timeout: float = Field(10.0, gt=0)
    # PEM file of CRLs from `ca`: a client certificate listed there is refused (mtls).
    # It must hold a current CRL for every CA that issues client certificates; reloaded on
    # SIGHUP with the certificates.
    crl: Path | None = None
    # Certificate identity (subject CN or a DNS/URI SAN) -> calling AE titles it may use.
    # When set, an mTLS client whose identity is not listed, or who calls with another AE
    # title, is rejected ("calling AE title not recognised").
    ae_titles: dict[str, list[str]] = {}

    @model_validator(mode="after")
    def _complete(self) -> ListenerTLS:
        if self.mode != "off" and self.cert is None:
            raise ValueError(f"mode {self.mode} needs cert and key")
        if self.mode == "mtls" and self.ca is None:
            raise ValueError("mode mtls needs ca: the CA bundle client certificates must chain to")
        if self.crl is not None and self.mode != "mtls":
            raise ValueError("crl revokes client certificates: needs mode mtls")
        if self.ae_titles and self.mode != "mtls":
            raise ValueError("ae_titles binds client certificates to AE titles: needs mode mtls")
        return self


class ClientTLS(TLSBase):
    """tls: verify the destination against `ca`; mtls: also present the router's cert/key."""

    verify_hostname: bool = True
    # The name to check the destination's certificate against (defaults to its host).
    server_name: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ClientTLS:
        if self.mode != "off" and self.ca is None:
            raise ValueError(f"mode {self.mode} needs ca: the CA bundle to verify the peer with")
        if self.mode == "mtls" and self.cert is None:
            raise ValueError("mode mtls needs cert and key: the router's client certificate")
        return self


class UserConfig(Strict):
    username: str = Field(min_length=1)
    # From `dicom-router hash-passcode`: pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>
    passcode_hash: str = Field(pattern=r"^pbkdf2_sha256\$\d+\$[0-9a-f]+\$[0-9a-f]+$")


class ListenConfig(Strict):
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    max_pdu: int = Field(DEFAULT_MAX_PDU, ge=4096, le=4_194_304)
    # Reject associations whose called AE is not the router's own AE title.
    require_called_ae: bool = False
    max_associations: int = Field(64, ge=1)
    max_associations_per_calling_ae: int | None = Field(None, ge=1)
    # A C-STORE dataset larger than this is refused (0xC003); the disk watermark still applies.
    max_dataset_bytes: int | None = Field(None, ge=1)
    # The largest dataset of any other request (C-FIND identifier, N-service dataset), which
    # is held in memory until complete: past it the association is aborted.
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=65536)
    # Allowlists; unset means anyone. Rejections use the reason PS3.8 defines for each.
    allowed_calling_ae: list[str] | None = None
    allowed_called_ae: list[str] | None = None
    allowed_sources: list[str] | None = None  # CIDR networks
    tls: ListenerTLS = ListenerTLS()
    # User identity negotiation (username, or username and passcode).
    users: list[UserConfig] = []
    require_user_identity: bool = False

    _networks = field_validator("allowed_sources", mode="before")(_check_networks)

    @model_validator(mode="after")
    def _identity_needs_users(self) -> ListenConfig:
        if self.require_user_identity and not self.users:
            raise ValueError("require_user_identity needs at least one entry in users")
        return self
    # How long the acceptor waits for the broker to take a job before answering 0xA700.
    submit_timeout: float = Field(10.0, gt=0)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    # The ARTIM timer's job: a connection must deliver its whole A-ASSOCIATE-RQ this soon
    # after connecting (capped by acse_timeout), or it is closed.
    association_request_timeout: float = Field(5.0, gt=0)
    # Connections that have not delivered their A-ASSOCIATE-RQ yet, per source address and
    # in all; more are closed at accept. They do not count in max_associations.
    max_pending_per_source: int = Field(32, ge=1)
    max_pending: int = Field(256, ge=1)
    backlog: int = Field(128, ge=1)  # the listen() backlog: bursts of connects wait in it


class SpoolConfig(Strict):
    path: Path = Path("spool")
    # Disk watermark: below either, C-STOREs get 0xA700 and associations are rejected
    # ("temporary congestion") until deliveries free space again.
    min_free_bytes: int = Field(1024**3, ge=0)
    min_free_percent: float = Field(5.0, ge=0, le=100)
    # How long the duplicate ledger remembers a delivery (destination, SOP Instance UID,
    # digest): the same bytes again within this window are not sent twice.
    duplicate_window: float = Field(24 * 3600.0, ge=0)


class QueueConfig(Strict):
    """Bounds of the broker's queue: past either, senders get 0xA700 and retry later."""

    max_jobs: int = Field(100_000, ge=1)
    max_bytes: int = Field(50 * 1024**3, ge=1)


class MetricsConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535)
    # A request must arrive whole within this; connections served at once, at most.
    request_timeout: float = Field(10.0, gt=0)
    max_connections: int = Field(32, ge=1)


class ApiConfig(Strict):
    """The operator API (/api/..., router/service/control_api.py) on the metrics port."""

    # A file holding a bearer token (Authorization: Bearer <token>) that /api/ requests
    # must carry. Unset: only clients on the loopback address may use the API.
    token_file: Path | None = None


class RetryConfig(Strict):
    max_attempts: int = Field(10, ge=1)
    initial_delay: float = Field(1.0, gt=0)
    max_delay: float = Field(300.0, gt=0)


class WindowConfig(Strict):
    """A daily time window (local time) when a destination may receive; across midnight when
    `end` is before `start` (off-peak 20:00-06:00)."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        from router.core.time_window import parse_clock

        parse_clock(value)
        return value


class DestinationBase(Strict):
    retry: RetryConfig = RetryConfig()
    # How many deliveries to this destination may run at once across all workers (the upper
    # bound of the association limit a DICOM destination learns: router/broker/concurrency.py).
    max_parallel: int = Field(4, ge=1)
    # A new reception of bytes this destination already got within spool.duplicate_window:
    # send (default: a re-send is new work) or skip (suppressed and counted).
    on_duplicate: Literal["send", "skip"] = "send"
    # Outside this window the destination's queue is held (nothing sent, nothing lost).
    window: WindowConfig | None = None
    # Applied to what this destination gets, after the routing rule's (README "Routing rules").
    morph: list[MorphAction] = []
    deidentify: DeidentifyConfig | None = None
    # Destinations that take this one's queue after it has been unavailable (connection or
    # association failures) for `fallback_after` seconds (README "Fallback destinations").
    fallback: list[str] = []
    fallback_after: float = Field(300.0, gt=0)


class DicomDestination(DestinationBase):
    type: Literal["dicom"]
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    # The calling AE the router presents; defaults to the router's own ae_title.
    calling_ae: str | None = None
    max_pdu: int = Field(DEFAULT_MAX_PDU, ge=4096, le=4_194_304)
    connect_timeout: float = Field(10.0, gt=0)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    # A pooled association unused for this long is released, so that a destination that
    # serves one association at a time is free for the next one (and for other senders).
    idle_timeout: float = Field(2.0, gt=0)
    # Pins how many associations the router opens to it; unset, the router learns it (from 1
    # up to max_parallel): a refused or unanswered association while one is open means busy.
    max_associations: int | None = Field(None, ge=1)
    # How long to wait for an A-ASSOCIATE-AC while the router holds another association to
    # this destination; no answer within it means busy, not down.
    busy_timeout: float = Field(3.0, gt=0)
    # After a busy answer, how long before the router tries one association more.
    probe_interval: float = Field(60.0, gt=0)
    tls: ClientTLS = ClientTLS()
    # C-MOVE through the router (README "Query and retrieve"): pass_through asks this
    # upstream to send to the requested destination itself (it must know that AE); relay asks
    # it to send to the router, which delivers to the destination from its own AE table.
    move_mode: Literal["pass_through", "relay"] = "pass_through"
    # The syntaxes this destination takes, in order of preference (UIDs or pydicom keywords):
    # an instance in another one is transcoded to the first the router can produce. Empty:
    # send as received, and transcode to Explicit/Implicit VR LE only if it refuses that.
    transfer_syntaxes: list[str] = []

    @field_validator("transfer_syntaxes")
    @classmethod
    def _syntax_uids(cls, value: list[str]) -> list[str]:
        return [_transfer_syntax_uid(v) for v in value]

    _ae = field_validator("ae_title", "calling_ae")(
        lambda v: None if v is None else _check_ae_title(v)
    )


class FolderDestination(DestinationBase):
    type: Literal["folder"]
    path: Path
    # fsync every file and directory entry: Success then means "on disk".
    fsync: bool = True


class DicomWebDestination(DestinationBase, DicomWebFields):
    """STOW-RS to a DICOMweb service (workers/destinations/dicomweb.py)."""


Destination = Annotated[DicomDestination | FolderDestination | DicomWebDestination,
                        Field(discriminator="type")]
StrOrList = str | list[str]


class RuleMatch(Strict):
    calling_ae: StrOrList | None = None
    called_ae: StrOrList | None = None
    # CIDR networks, kept as text (validated here, parsed once when rules are compiled).
    source: list[str] | None = None
    # SOP Class UIDs or their pydicom keywords (e.g. StudyRootQueryRetrieveInformationModelFind).
    sop_class: StrOrList | None = None
    # keyword -> exact value, list of values (any of), or "re:<regex>" (searched).
    tags: dict[str, StrOrList] = {}

    _networks = field_validator("source", mode="before")(_check_networks)

    @field_validator("sop_class")
    @classmethod
    def _sop_class_uids(cls, value: StrOrList | None) -> StrOrList | None:
        if value is None:
            return None
        return [_sop_class_uid(v) for v in ([value] if isinstance(value, str) else value)]

    @field_validator("tags")
    @classmethod
    def _known_keywords(cls, tags: dict[str, StrOrList]) -> dict[str, StrOrList]:
        if tags:
            # Here, not at the top: pydicom's dictionaries cost ~35 MB in every process that
            # imports this module, and the supervisor and broker need pydicom for nothing else.
            from pydicom.datadict import tag_for_keyword
        for keyword, expected in tags.items():
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"{keyword!r} is not a DICOM keyword (e.g. Modality)")
            for value in [expected] if isinstance(expected, str) else expected:
                if value.startswith("re:"):
                    try:
                        re.compile(value[3:])
                    except re.error as exc:
                        raise ValueError(f"tag {keyword}: bad regular expression: {exc}") from exc
        return tags


class CompleteConfig(Strict):
    """Wait until a study or series is stable, then forward it as one batch in order."""

    level: Literal["study", "series"] = "study"
    stable_for: float = Field(60.0, gt=0)  # seconds without a new instance of the group
    deadline: float = Field(3600.0, gt=0)  # seconds after its first instance, at the latest


class Rule(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    match: RuleMatch = RuleMatch()
    # Where received instances (C-STORE) go: every destination listed.
    forward: list[str] = []
    # Where queries, retrieves and N-services (C-FIND, C-GET, C-MOVE, N-*) go: the first
    # upstream that answers, in this order.
    query: list[str] = []
    # Keep evaluating later rules after this one matched (fan-out across rules).
    continue_: bool = Field(False, alias="continue")
    # forward: route as above; drop: answer Success, keep nothing (counted); reject: answer
    # a failure (0xC004) naming the rule. drop and reject end the evaluation.
    action: Literal["forward", "drop", "reject"] = "forward"
    # Applied to what this rule forwards, before the destination's own.
    morph: list[MorphAction] = []
    deidentify: DeidentifyConfig | None = None
    # urgent work jumps its destinations' queues; "request" takes the C-STORE's own priority.
    priority: Literal["urgent", "high", "normal", "low", "request"] = "request"
    complete: CompleteConfig | None = None

    @model_validator(mode="after")
    def _routes_somewhere(self) -> Rule:
        if self.action == "forward" and not self.forward and not self.query:
            raise ValueError(f"rule {self.name!r} needs `forward` (instances), `query` "
                             "(queries, retrieves, N-services) or both")
        if self.action != "forward" and (self.forward or self.complete):
            raise ValueError(f"rule {self.name!r}: action {self.action} takes no `forward` "
                             "or `complete`")
        if self.complete is not None and not self.forward:
            raise ValueError(f"rule {self.name!r}: `complete` needs `forward`")
        return self


class KnownAE(Strict):
    host: str
    port: int = Field(ge=1, le=65535)
    tls: ClientTLS = ClientTLS()


class RouterConfig(Strict):
    ae_title: str = "DICOM-ROUTER"
    listen: ListenConfig = ListenConfig()
    spool: SpoolConfig = SpoolConfig()
    queue: QueueConfig = QueueConfig()
    workers: int = Field(2, ge=1, le=64)
    # Delivery threads per worker process: how many destinations one worker serves at once.
    worker_threads: int = Field(4, ge=1, le=64)
    metrics: MetricsConfig = MetricsConfig()
    api: ApiConfig = ApiConfig()
    console: ConsoleConfig = ConsoleConfig()  # the web console (README "Web console")
    destinations: dict[str, Destination] = {}
    rules: list[Rule] = []
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json: one object a line with association and job ids, for a log pipeline.
    log_format: Literal["text", "json"] = "text"
    # On SIGTERM: how long associations in progress may take to finish before being aborted.
    drain_grace: float = Field(30.0, ge=0)
    audit: AuditConfig = AuditConfig()
    # AE titles the router may send to on a requester's behalf: C-MOVE destinations in relay
    # mode and requesters that get storage commitment results on a new association. The AE
    # titles of DICOM destinations are known too.
    known_aes: dict[str, KnownAE] = {}
    # How long the acceptor waits for a worker's next answer to a relayed request (queries,
    # retrieves, N-services) before it answers the requester with a failure.
    request_timeout: float = Field(120.0, gt=0)

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("known_aes")
    @classmethod
    def _known_ae_titles(cls, value: dict[str, Any]) -> dict[str, Any]:
        for title in value:
            _check_ae_title(title)
        return value

    @field_validator("destinations")
    @classmethod
    def _safe_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Destination names become metric labels and spool file names.
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"destination name {name!r}: use letters, digits, - and _")
        return value

    @model_validator(mode="after")
    def _references_resolve(self) -> RouterConfig:
        rules = [(r.name, r.forward, r.query) for r in self.rules]
        problems = reference_problems(rules, self.destinations)
        problems += fallback_problems(self.destinations)
        if problems:
            raise ValueError(_JOINER.join(problems))
        return self


_JOINER = "\n"


def _destination_type(destination: Any) -> Any:
    return destination.get("type") if isinstance(destination, dict) else \
        getattr(destination, "type", None)


def _transfer_syntax_uid(value: str) -> str:
    """A transfer syntax UID as is, or a keyword (ExplicitVRLittleEndian) to its UID."""
    from pydicom._uid_dict import UID_dictionary

    for uid, entry in UID_dictionary.items():
        if (uid == value or entry[4] == value) and entry[1] == "Transfer Syntax":
            return str(uid)
    raise ValueError(f"{value!r} is not a transfer syntax UID or keyword "
                     "(e.g. ExplicitVRLittleEndian, JPEG2000Lossless)")


def _sop_class_uid(value: str) -> str:
    """A UID as is; a keyword (StudyRootQueryRetrieveInformationModelFind) to its UID."""
    if re.fullmatch(r"[0-9]+(\.[0-9]+)+", value) or value.startswith("re:"):
        return value
    from pydicom._uid_dict import UID_dictionary  # lazily: see RuleMatch._known_keywords

    for uid, entry in UID_dictionary.items():
        if entry[4] == value:
            return str(uid)
    raise ValueError(f"{value!r} is neither a UID nor a SOP class keyword "
                     "(e.g. StudyRootQueryRetrieveInformationModelFind)")


def reference_problems(rules: list[tuple[Any, Any, Any]], destinations: Any) -> list[str]:
    """Rule names are unique, every `forward` names a destination and every `query` a DICOM
    destination. Works on raw data too, so these problems are listed even when other keys
    are invalid."""
    names = set(destinations) if isinstance(destinations, dict) else set()
    dicom = {n for n in names if _destination_type(destinations[n]) == "dicom"}
    problems = []
    seen: set[Any] = set()
    for i, (name, forward, query) in enumerate(rules):
        if isinstance(name, str) and name in seen:
            problems.append(f"rules[{i}].name: duplicate rule name {name!r}")
        seen.add(name)
        for target in forward if isinstance(forward, list) else []:
            if isinstance(target, str) and target not in names:
                known = ", ".join(sorted(names)) or "none defined"
                problems.append(f"rules[{i}].forward: unknown destination {target!r} "
                                f"(known: {known})")
        for target in query if isinstance(query, list) else []:
            if isinstance(target, str) and target not in dicom:
                known = ", ".join(sorted(dicom)) or "none defined"
                problems.append(f"rules[{i}].query: {target!r} is not a DICOM destination "
                                f"(known: {known})")
    if not rules:
        problems.append("rules: at least one rule is needed, or nothing is ever routed")
    return problems


def _raw_reference_problems(data: dict[str, Any]) -> list[str]:
    rules = data.get("rules")
    if not isinstance(rules, list):
        return [] if "rules" in data else reference_problems([], {})
    pairs = [(r.get("name"), r.get("forward"), r.get("query")) for r in rules
             if isinstance(r, dict)]
    return reference_problems(pairs, data.get("destinations")) + \
        fallback_problems(data.get("destinations"))


def default_config() -> RouterConfig:
    """The built-in config of `make run`: receive on 11112, store everything under ./received."""
    return RouterConfig.model_validate(
        {
            "destinations": {"received": {"type": "folder", "path": "received"}},
            "rules": [{"name": "store-everything", "forward": ["received"]}],
        }
    )


def _location(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    if len(parts) > 2 and parts[0] == "destinations" and parts[2] in ("dicom", "folder"):
        del parts[2]  # pydantic's discriminator branch: the destination's type, not a key
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif any(c in part for c in "[(") or part.startswith(("function-", "lambda")):
            continue  # pydantic's union/validator branch names mean nothing to an operator
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _problems(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        where = _location(tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        if where == "(top level)" and err["type"] == "value_error":
            continue  # our cross-reference checks: listed below from the raw data
        if f"{where}: {message}" not in problems:  # unions repeat one error per branch
            problems.append(f"{where}: {message}")
    return problems + _raw_reference_problems(data)


def parse_config(data: Any, source: str = "config") -> RouterConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of keys to values"])
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, data)) from None


def load_config(path: Path) -> RouterConfig:
    """Read and validate a YAML config file; every problem is reported with its key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text (byte {exc.start}): save it as UTF-8"]) \
            from None
    stream = io.StringIO(text)
    stream.name = str(path)  # PyYAML names the file in its errors
    try:
        data = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_config(data, str(path))


def summary(config: RouterConfig) -> str:
    return (
        f"ok: AE {config.ae_title} on {config.listen.host}:{config.listen.port}, "
        f"{config.workers} workers, {len(config.destinations)} destinations, "
        f"{len(config.rules)} rules, spool {config.spool.path}"
    )
