"""Conventions every `dicom-router` command shares: `--config` before or after the action,
`--version`, bad command-line input reported as one line (exit 2), an invalid config file as
every problem in it (exit 1), never as a traceback."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from router.core.errors import RouterError
from router.core.peer_address import host_port

USAGE_ERROR = 2  # argparse's own exit code for bad arguments
CONFIG_ERROR = 1  # a config file that does not validate: as `run` and `check-config` say it

T = TypeVar("T")


def config_parent(help_text: str = "the router's YAML config file") -> argparse.ArgumentParser:
    """A parent parser with `--config`, for a command and each of its actions.

    Its default is SUPPRESS: argparse copies a subparser's defaults over what the parent
    parsed, so `dicom-router dead-letters --config X list` would lose X otherwise. The top
    parser sets `config=None` once.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                        help=help_text)
    return parent


def argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse `type=` from a parser that raises RouterError or ValueError: argparse then
    prints usage and the message (exit 2) instead of a traceback."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except (RouterError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("dicom-router")
    except PackageNotFoundError:
        return "unknown"


def lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """A command's function ("module:function"), imported only when the command runs, so
    that `dicom-router` and the processes it spawns load what they use and no more."""
    def run(args: argparse.Namespace) -> int:
        module, _, name = target.partition(":")
        return int(getattr(importlib.import_module(module), name)(args))
    return run


def metrics_url(host: str, port: int) -> str:
    """Where the command line reaches the router's HTTP port: on this host when it listens
    on every address; an IPv6 address in brackets (http://::1:9100 is no URL)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host_port(host, port)}"
