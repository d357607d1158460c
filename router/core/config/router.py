"""The whole config (RouterConfig): its cross-checks, loading a file with messages that name
the offending key, the built-in default, and the one-line summary."""

from __future__ import annotations

import datetime
import io
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from router.core.audit_config import AuditConfig
from router.core.bounds import GIB, PIB, between
from router.core.config.base import SHOWN_CHARS, Strict, _check_ae_title, shown
from router.core.config.destinations import Destination, KnownAE, _destination_type
from router.core.config.listen import ListenConfig
from router.core.config.rules import Rule
from router.core.config.service import ApiConfig, MetricsConfig, QueueConfig, SpoolConfig
from router.core.console_config import ConsoleConfig
from router.core.durations import Seconds, not_finite
from router.core.errors import ConfigError
from router.core.fallback_spec import fallback_problems
from router.core.peer_address import host_port


class RouterConfig(Strict):
    ae_title: str = "DICOM-ROUTER"
    listen: ListenConfig = ListenConfig()
    spool: SpoolConfig = SpoolConfig()
    queue: QueueConfig = QueueConfig()
    workers: Annotated[int, between(1, 64)] = 2
    # Delivery threads per worker process: how many destinations one worker serves at once.
    worker_threads: Annotated[int, between(1, 64)] = 4
    metrics: MetricsConfig = MetricsConfig()
    api: ApiConfig = ApiConfig()
    console: ConsoleConfig = ConsoleConfig()  # the web console (README "Web console")
    destinations: dict[str, Destination] = {}
    rules: list[Rule] = []
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json: one object a line with association and job ids, for a log pipeline.
    log_format: Literal["text", "json"] = "text"
    # On SIGTERM: how long associations in progress may take to finish before being aborted.
    drain_grace: Seconds = Field(30.0, ge=0)
    audit: AuditConfig = AuditConfig()
    # AE titles the router may send to on a requester's behalf: C-MOVE destinations in relay
    # mode and requesters that get storage commitment results on a new association. The AE
    # titles of DICOM destinations are known too.
    known_aes: dict[str, KnownAE] = {}
    # How long the acceptor waits for a worker's next answer to a relayed request (queries,
    # retrieves, N-services) before it answers the requester with a failure.
    request_timeout: Seconds = Field(120.0, gt=0)
    # The most pixel data a transcode may decode (README "Transcoding"): it takes about three
    # times that in the worker's codec process; a larger instance is a `transcode` dead letter.
    transcode_max_decoded_bytes: Annotated[int, between(1, PIB)] = 2 * GIB

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("known_aes")
    @classmethod
    def _known_ae_titles(cls, value: dict[str, Any]) -> dict[str, Any]:
        for title in value:
            _check_ae_title(title)
        return value

    @field_validator("destinations", mode="before")
    @classmethod
    def _string_names(cls, value: Any) -> Any:
        for name in value if isinstance(value, dict) else []:
            if not isinstance(name, str):
                raise ValueError(f"destination name {name!r} is read as a number (or "
                                 f"another non-string): names must be strings, so quote it "
                                 f"('{name}': ...)")
        return value

    @field_validator("destinations")
    @classmethod
    def _safe_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Destination names become metric labels and spool file names.
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"destination name {shown(name)}: use letters, digits, - and _")
        return value

    @model_validator(mode="after")
    def _references_resolve(self) -> RouterConfig:
        rules = [(r.name, r.forward, r.query) for r in self.rules]
        problems = reference_problems(rules, self.destinations)
        problems += fallback_problems(self.destinations)
        problems += port_problems(self.model_dump())
        if problems:
            raise ValueError(_JOINER.join(problems))
        return self


_JOINER = "\n"


def reference_problems(rules: list[tuple[Any, Any, Any]], destinations: Any) -> list[str]:
    """Rule names are unique, every `forward` names a destination and every `query` a DICOM
    destination. Works on raw data too, so these problems are listed even when other keys
    are invalid."""
    # Only string names: one YAML read as a number (1:) is reported on its own, and sorting
    # mixed names for the message raised TypeError (a traceback in check-config).
    given = list(destinations) if isinstance(destinations, dict) else []
    names = {n for n in given if isinstance(n, str)}
    unquoted = {str(n) for n in given if not isinstance(n, str)}  # reported on their own
    dicom = {n for n in names if _destination_type(destinations[n]) == "dicom"}
    problems = []
    seen: set[Any] = set()
    for i, (name, forward, query) in enumerate(rules):
        if isinstance(name, str) and name in seen:
            problems.append(f"rules[{i}].name: duplicate rule name {shown(name)}")
        seen.add(name)
        for target in forward if isinstance(forward, list) else []:
            if isinstance(target, str) and target not in names | unquoted:
                known = ", ".join(sorted(names)) or "none defined"
                problems.append(f"rules[{i}].forward: unknown destination {shown(target)} "
                                f"(known: {known})")
        for target in query if isinstance(query, list) else []:
            if isinstance(target, str) and target not in dicom:
                known = ", ".join(sorted(dicom)) or "none defined"
                problems.append(f"rules[{i}].query: {shown(target)} is not a DICOM destination "
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
        fallback_problems(data.get("destinations")) + port_problems(data)


_ANY_HOST = ("0.0.0.0", "::", "")
_PORTS = (("listen", "0.0.0.0", 11112, True), ("metrics", "127.0.0.1", 9100, True),
          ("console", "127.0.0.1", None, False))  # (key, default host, port, enabled)


def port_problems(data: dict[str, Any]) -> list[str]:
    """Two listeners on one port of one host: the second could never start ("address in
    use" at run, after check-config said ok). Works on raw data too."""
    bound = []
    for key, host, port, enabled in _PORTS:
        section = data.get(key)
        section = section if isinstance(section, dict) else {}
        if key == "console" and section.get("port") is None:
            continue  # served on the metrics port
        if not section.get("enabled", enabled):
            continue
        host, port = section.get("host", host), section.get("port", port)
        if isinstance(port, int) and port and isinstance(host, str):
            bound.append((key, host, port))
    problems = []
    for i, (key, host, port) in enumerate(bound):
        for other, other_host, other_port in bound[:i]:
            if port == other_port and (host == other_host or {host, other_host} & {*_ANY_HOST}):
                problems.append(f"{key}.port: {port} is also {other}.port on the same host: "
                                "give each its own port")
    return problems


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
    branches = ("dicom", "folder", "dicomweb")
    if len(parts) > 2 and parts[0] == "destinations" and parts[2] in branches:
        del parts[2]  # pydantic's discriminator branch: the destination's type, not a key
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif any(c in part for c in "[(") or part.startswith(("function-", "lambda")):
            continue  # pydantic's union/validator branch names mean nothing to an operator
        else:
            part = part if len(part) <= SHOWN_CHARS else f"{part[:SHOWN_CHARS]}..."
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _key_problem(key: Any) -> str:
    advice = "keys must be names (strings), so quote it"
    if isinstance(key, bool):
        return f"a key is read as true/false (yes, no, on, off...): {advice}"
    if key is None:
        return f"a key is read as null (~ or null): {advice}"
    if isinstance(key, int | float):
        return f"key {key} is read as a number: {advice} ('{key}': ...)"
    if isinstance(key, datetime.date):
        return f"key {key} is read as a date: {advice} ('{key}': ...)"
    return f"key {key!r} is not a string: {advice}"


def _non_string_key(err: Any) -> tuple[str, str] | None:
    """A mapping key YAML read as something else than a string (`1:`, `2024-01-01:`, `yes:`):
    its place, and what to do about it (pydantic said "Input should be a valid string" with
    the key looking like a list index, or "Keys should be strings")."""
    loc = tuple(err["loc"])
    if err["type"] == "invalid_key":
        parent, key = loc[:-1], err["input"]
    elif err["type"] == "string_type" and len(loc) >= 2 and loc[-1] == "[key]":
        parent, key = loc[:-2], err["input"]
    else:
        return None
    return _location(parent), _key_problem(key)


def _problem(err: Any) -> tuple[str, str] | None:
    """One pydantic error as (where, what) in an operator's words; None to leave it out."""
    key = _non_string_key(err)
    if key is not None:
        return key
    where = _location(tuple(err["loc"]))
    message = err["msg"].removeprefix("Value error, ")
    message = _cut_values(message, err.get("input"))
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    # .nan fails every bound; .inf keeps our bounded durations' own message (it says
    # the maximum), any other check on it says it must be finite.
    finite = not_finite(err.get("input"))
    if finite is not None and not (err["type"] == "value_error" and math.isinf(err["input"])):
        message = finite
    if where == "(top level)" and err["type"] == "value_error":
        return None  # our cross-reference checks: listed from the raw data
    return where, message


# A quoted value (a validator's {value!r}) longer than SHOWN_CHARS, cut to that.
_LONG_QUOTED = re.compile(rf"'([^']{{{SHOWN_CHARS}}})[^']+'")
LINE_CHARS = 1000  # and whatever else a message repeats, at most this much


def _cut_values(message: str, value: Any) -> str:
    """A message that repeats the value it refuses repeats its start only."""
    if isinstance(value, str):
        message = message.replace(repr(value), shown(value))
    message = _LONG_QUOTED.sub(r"'\1'...", message)
    return message if len(message) <= LINE_CHARS else f"{message[:LINE_CHARS]}..."


def _problems(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        problem = _problem(err)
        line = None if problem is None else f"{problem[0]}: {problem[1]}"
        if line is not None and line not in problems:  # unions repeat one error per branch
            problems.append(line)
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
        f"ok: AE {config.ae_title} on {host_port(config.listen.host, config.listen.port)}, "
        f"{config.workers} workers, {len(config.destinations)} destinations, "
        f"{len(config.rules)} rules, spool {config.spool.path}"
    )
