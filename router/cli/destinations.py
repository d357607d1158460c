"""`dicom-router destinations list|pause|resume|retry|drain-to`: control a running router's
destinations through its operator API (router/service/control_api.py) on the metrics port."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from router.cli.common import config_parent, metrics_url
from router.core.config import load_config
from router.core.errors import RouterError
from router.service.api_auth import read_token
from router.service.destination_state import state

ACTIONS = {
    "list": "show every destination's state (paused, backing off, fallback, queue)",
    "pause": "hold a destination's queue (nothing sent, nothing lost; kept over restarts)",
    "resume": "send a paused destination's queue again",
    "retry": "try a destination that is backing off after failures now",
    "drain-to": "move what is queued for a destination to another one",
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parent = config_parent("the router's config (for its metrics address and api.token_file)")
    parent.add_argument("--url", default=argparse.SUPPRESS,
                        help="the router's HTTP address (default: from --config, else "
                             "http://127.0.0.1:9100)")
    parent.add_argument("--token-file", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                        help="bearer token for the API (default: api.token_file of --config)")
    parser = sub.add_parser("destinations", parents=[parent],
                            help="pause, resume, retry or drain a destination of a running "
                                 "router")
    actions = parser.add_subparsers(dest="action", required=True)
    for name, text in ACTIONS.items():
        action = actions.add_parser(name, help=text, parents=[parent])
        if name == "list":
            action.add_argument("--json", action="store_true", help="print the API's JSON")
            continue
        action.add_argument("name", help="the destination (as in the config)")
        if name == "drain-to":
            action.add_argument("target", help="the configured destination to send it to")
    parser.set_defaults(func=run)


def _where(args: argparse.Namespace) -> tuple[str, str | None]:
    url = getattr(args, "url", None)
    token_file: Path | None = getattr(args, "token_file", None)
    if args.config is not None:
        config = load_config(args.config)
        if url is None:
            url = metrics_url(config.metrics.host, config.metrics.port)
        token_file = token_file or config.api.token_file
    url = url or "http://127.0.0.1:9100"
    url = url if "://" in url else f"http://{url}"
    try:
        token = read_token(token_file) if token_file is not None else None
    except OSError as exc:
        raise RouterError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    return url.rstrip("/"), token


def call(url: str, token: str | None, path: str, body: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    """One API request; RouterError with the router's own message when it refuses."""
    headers = {"X-Dicom-Router-User": _user()}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=data, headers=headers,
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise RouterError(f"{message} (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RouterError(f"cannot reach the router at {url} ({reason}): is it running, "
                          "and is this its metrics address (--url or --config)?") from None


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def _print_list(rows: dict[str, Any]) -> None:
    # As wide as the longest name and state: states combine ("paused by operator, backing
    # off 2s (connection)") and a fixed width pushed such a row's numbers out of line.
    states = {name: state(row) for name, row in rows.items()}
    name_width = max([20, *map(len, rows)])
    state_width = max([28, *map(len, states.values())])
    print(f"{'DESTINATION':<{name_width}} {'STATE':<{state_width}} {'QUEUED':>7} "
          f"{'IN FLIGHT':>9} {'ASSOC':>6}")
    for name, row in sorted(rows.items()):
        assoc = f"{row.get('associations', 0)}/{row['concurrency']}" \
            if "concurrency" in row else "-"
        print(f"{name:<{name_width}} {states[name]:<{state_width}} {row.get('depth', 0):>7} "
              f"{row.get('in_flight', 0):>9} {assoc:>6}")


# `destinations list` answered, but with the broker's last report, not the current state.
EXIT_STALE = 3


def stale_warning(answer: dict[str, Any], now: float) -> str | None:
    """The warning for rows a hung or dead broker left, None when they are current."""
    if not answer.get("stale"):
        return None
    updated = answer.get("updated")
    if updated is None:
        return "warning: the broker has not reported yet (starting, hung or down): " \
            "no destination state to show"
    return (f"warning: the broker has not reported for {max(0, now - float(updated)):.0f}s "
            "(hung or down): these rows are its last report, not the current state")


def run(args: argparse.Namespace) -> int:
    url, token = _where(args)
    if args.action == "list":
        answer = call(url, token, "/api/destinations")
        rows = answer["destinations"]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_list(rows)
        warning = stale_warning(answer, time.time())
        if warning is not None:
            print(warning, file=sys.stderr)
            return EXIT_STALE
        return 0
    action = "drain" if args.action == "drain-to" else args.action
    body = {"to": args.target} if action == "drain" else {}
    answer = call(url, token, f"/api/destinations/{args.name}/{action}", body)
    print(answer.get("detail", "done"))
    return 0
