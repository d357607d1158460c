"""Builds the console for the supervisor: on the metrics port, or on its own server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest

from router.audit.trail import AuditTrail
from router.core.config import RouterConfig
from router.service.control_api import ControlApi
from router.service.metric_samples import Samples, parse_metrics
from router.service.metrics_collector import ChildrenCollector

if TYPE_CHECKING:
    from router.service.console.app import Console
    from router.service.console.server import ConsoleServer


def metrics_reader(metrics_dir: Path) -> Callable[[], Samples]:
    registry = CollectorRegistry()
    ChildrenCollector(registry, path=str(metrics_dir))
    return lambda: parse_metrics(generate_latest(registry).decode())


def build(config: Callable[[], RouterConfig], api: ControlApi,
          status: Callable[[], dict[str, Any]], metrics_dir: Path, audit: AuditTrail | None
          ) -> tuple[Console | None, ConsoleServer | None]:
    """(console to mount on the metrics port, or its own server to start), or (None, None)."""
    settings = config().console
    if not settings.enabled:
        return None, None
    # Here, not at the top: the pages and argon2 (whose import-time hash costs 0.14 s of
    # CPU) are loaded only by a router whose console is on.
    from router.service.console.app import Console
    from router.service.console.server import ConsoleServer

    console = Console(config, api, status, metrics_reader(metrics_dir), audit)
    if settings.port is None:
        return console, None
    return None, ConsoleServer(settings, console)
