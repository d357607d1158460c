"""Config reload on SIGHUP: what changed, who applies it, and what needs a restart instead.

The supervisor validates the new file first (a bad one is refused with the reason and the old
config stays in force), then hands the validated config to its children through the run's
private folder, so that every process applies exactly what was checked, never a file edited
again in between. In this order, so that no job is routed to a destination the broker does
not know yet:

1. the broker applies destinations' retry and parallelism policies and the queue bounds, and
   reports the generation it applied in its live status (every process applies log_level
   and log_format on its SIGHUP);
2. workers are restarted one at a time (each finishes the deliveries it holds first and
   cancels the relayed requests it holds), because their connection pools and the upstreams
   of relayed requests are built from the destinations and known_aes, and they apply the
   rules' morph and deidentify (a reload changing only those went unseen by them);
3. the acceptor applies rules, access controls, limits and timeouts to new associations
   (associations in progress keep what they negotiated).

Keys that shape sockets, files or the process set cannot change under a running router: a
file that changes them is refused whole, with the keys named, so that nothing is half applied.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.core.config import RouterConfig, parse_config
from router.core.errors import RouterError

# Dotted key prefixes that need a restart of the router.
RESTART_ONLY = (
    "ae_title", "listen.host", "listen.port", "listen.max_pdu", "listen.tls.mode",
    "listen.acceptors",
    "spool", "metrics", "api", "console", "workers", "worker_threads", "audit",
)
ACCEPTOR_KEYS = ("rules", "listen", "log_level", "log_format", "drain_grace")
# Workers build their pools and relayed requests' upstreams from these: they restart. The
# broker applies queue.* on its SIGHUP, and every process its logging (workers included):
# restarting workers for those cancelled relayed retrieves for nothing.
PIPELINE_KEYS = ("destinations", "known_aes")


class ReloadRefused(RouterError):
    """The new config is not applied; the message says why and what to do."""


@dataclass(frozen=True)
class ReloadPlan:
    changed: tuple[str, ...]  # dotted keys whose values differ
    # A rule's morph, deidentify or forward changed: the workers apply them, from the config
    # they started with.
    rule_transforms: bool = False

    @property
    def needs_restart(self) -> tuple[str, ...]:
        return tuple(k for k in self.changed if _under(k, RESTART_ONLY))

    @property
    def acceptor(self) -> bool:
        return any(_under(k, ACCEPTOR_KEYS) for k in self.changed)

    @property
    def pipeline(self) -> bool:
        """The broker reloads its policies and the workers restart."""
        return self.rule_transforms or any(_under(k, PIPELINE_KEYS) for k in self.changed)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def plan(old: RouterConfig, new: RouterConfig) -> ReloadPlan:
    """Compare two validated configs key by key; refuse if a restart-only key changed."""
    changed = tuple(sorted(_diff(_as_data(old), _as_data(new), "")))
    result = ReloadPlan(changed, _rule_transforms(old) != _rule_transforms(new))
    if result.needs_restart:
        raise ReloadRefused(
            f"these keys cannot change while the router runs: {', '.join(result.needs_restart)};"
            " restart the router to apply them (nothing of the new file was applied)")
    return result


def _rule_transforms(config: RouterConfig) -> dict[str, Any]:
    """What the workers read of the rules (workers.prepare_steps.steps_for), by rule name."""
    return {rule.name: (rule.forward, rule.morph, rule.deidentify) for rule in config.rules}


def _as_data(config: RouterConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", by_alias=True)


def _diff(old: Any, new: Any, prefix: str) -> set[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        found: set[str] = set()
        for key in keys:
            found |= _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return set() if old == new else {prefix.rstrip(".")}


# --- handing the validated config to the children ---------------------------------------------

def config_file(run_directory: Path) -> Path:
    return run_directory / "config.json"


def save(config: RouterConfig, run_directory: Path, generation: int) -> None:
    """Write the validated config for the children, atomically and readable only by us."""
    target = config_file(run_directory)
    temp = target.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"generation": generation, "config": _as_data(config)}, out)
    os.replace(temp, target)


def load(run_directory: Path) -> tuple[int, RouterConfig] | None:
    """The config the supervisor validated last, with its generation; None before a reload."""
    path = config_file(run_directory)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return int(data["generation"]), parse_config(data["config"], str(path))
