"""`dicom-router status`: the live view, or one frame of it as text with --once."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from router.cli.common import argument, metrics_url
from router.core.config import load_config
from router.core.errors import RouterError

MAX_INTERVAL = 3600.0


def _interval(text: str) -> float:
    """Seconds between refreshes: `inf` or 1e300 overflowed time.sleep with a traceback."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= MAX_INTERVAL:  # also false for nan
        raise ValueError(f"give seconds above 0 and up to {MAX_INTERVAL:.0f}, not {text!r}")
    return seconds


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status", help="live view of a running router: associations, queues, throughput, errors")
    where = status.add_mutually_exclusive_group()
    where.add_argument("--url", help="the router's metrics address "
                       "(default: from --config, else http://127.0.0.1:9100)")
    where.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                       help="read metrics.host/port from this config")
    status.add_argument("--interval", type=argument(_interval), default=1.0,
                        help="seconds between refreshes (and between the two reads of --once), "
                             f"0.2 to {MAX_INTERVAL:.0f}")
    status.add_argument("--once", action="store_true",
                        help="print one frame as plain text and exit (scripts, tests, SSH logs); "
                             "without a terminal, plain frames follow until interrupted")
    status.set_defaults(func=cmd_status)


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url) if "://" in args.url else f"http://{args.url}"
    if args.config is not None:
        metrics = load_config(args.config).metrics
        return metrics_url(metrics.host, metrics.port)
    return "http://127.0.0.1:9100"


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from router.cli.status_screen import read, render

    interval = max(0.2, args.interval)  # a shorter one is raised to this
    url = _url(args)  # an invalid config is every command's: exit 1 (router.cli.main)
    try:
        before = read(url)
        if args.once or not sys.stdout.isatty():
            # Piped or redirected, a live view prints nothing until it ends: plain frames
            # then, one per interval (or one with --once), so `status | tee` shows progress.
            plain = Console(width=160, no_color=True, force_terminal=False)
            while True:
                time.sleep(interval)
                now = read(url)
                plain.print(render(before, now))
                if args.once:
                    return 0
                plain.print()
                sys.stdout.flush()
                before = now
        with Live(render(before, before), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                now = read(url)
                live.update(render(before, now), refresh=True)
                before = now
    except RouterError as exc:
        print(f"dicom-router status: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
