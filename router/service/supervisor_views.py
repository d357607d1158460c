"""What the supervisor shows over HTTP: GET /status, and the operator API and console apps
it serves on its port. Read-only views of a running Supervisor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from router.acceptor.admission import AcceptorState
from router.audit.trail import AuditTrail
from router.core.errors import RouterError
from router.core.peer_address import host_port
from router.core.status_snapshots import read_snapshots
from router.service import preflight
from router.service.child_process import Child
from router.service.control_api import ControlApi
from router.service.control_client import ControlClient
from router.service.http_types import App

if TYPE_CHECKING:
    from router.service.supervisor import Supervisor


def status(sup: Supervisor) -> dict[str, Any]:
    """GET /status: the processes, readiness and the children's live snapshots."""
    ok, why = sup.ready()
    return {
        "version": preflight.version(),
        "ae_title": sup.config.ae_title,
        "listen": host_port(sup.config.listen.host, sup.config.listen.port),
        "started_at": sup.started_at,
        "ready": ok,
        "ready_reason": why,
        "config": {"path": str(sup.config_path) if sup.config_path else None},
        "processes": [_process_row(sup, c) for c in sup.children],
        "commitment_results_kept": sup.commitment_results_kept,
        **read_snapshots(sup.runtime.status_dir),
    }


def _process_row(sup: Supervisor, child: Child) -> dict[str, Any]:
    row = {"name": child.name, "pid": child.process.pid if child.process else None,
           "alive": child.alive, "restarts": child.restarts}
    if child.is_acceptor:
        row["state"] = AcceptorState.NAMES[sup.seats.state(acceptor_index(child))]
    return row


def acceptor_index(child: Child) -> int:
    """An acceptor's number, 1..N, from its name."""
    return int(child.name.rpartition("-")[2])


def operator_apps(sup: Supervisor, audit: AuditTrail | None) -> list[App]:
    """The operator API (and the console) on the HTTP port; sets sup.console."""
    from router.service.console import wiring  # argon2 and the pages only when configured

    client = ControlClient(sup.runtime.frontend)
    api = ControlApi(lambda: sup.config, client, lambda: _destinations(sup), audit)
    settings = sup.config.console
    if settings.enabled and settings.port is None and not sup.config.metrics.enabled:
        raise RouterError("console.enabled without console.port is served on the metrics "
                          "port, but metrics.enabled is false: set console.port or "
                          "enable metrics")
    try:
        console, sup.console = wiring.build(lambda: sup.config, api, sup.status,
                                            sup.runtime.metrics_dir, audit)
    except OSError as exc:
        raise RouterError(f"cannot listen for the console on "
                          f"{host_port(settings.host, settings.port or 0)} "
                          f"(console.host/console.port): {exc.strerror}") from None
    return [api] if console is None else [api, console]


def _destinations(sup: Supervisor) -> dict[str, Any]:
    broker = read_snapshots(sup.runtime.status_dir).get("broker", {})
    return dict(broker.get("destinations", {}))
