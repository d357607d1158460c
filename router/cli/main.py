"""The `dicom-router` command: run the router, or check a config."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import TextIO

from router.audit.json_lines_file import check_writable
from router.cli import dead_letters as cli_dead_letters
from router.cli import destinations as cli_destinations
from router.cli import peer_commands
from router.cli import route_test as cli_route_test
from router.cli import status as cli_status
from router.cli.common import CONFIG_ERROR, USAGE_ERROR, config_parent, version
from router.core.burned_in import burned_in_defaults, burned_in_policies
from router.core.config import RouterConfig, default_config, load_config, summary
from router.core.deid_key import read_key_file
from router.core.errors import ConfigError, RouterError, TLSConfigError
from router.core.patterns import nested_morph_quantifiers, nested_quantifiers
from router.core.process_util import setup_logging
from router.core.rules import (
    drops_after_continue,
    mapped_source_notes,
    per_cell_completions,
    shared_completions,
    shared_destinations,
)
from router.core.runtime_dirs import create_runtime_dir, remove_stale_runtime_dirs
from router.core.tls import check_contexts
from router.core.tls_dates import expiry_warnings


def _load(path: Path | None) -> RouterConfig:
    return default_config() if path is None else load_config(path)


def check_key_file(config: RouterConfig, source: str) -> None:
    """spool.deidentify_key_file, as the workers will read it: a ConfigError now rather
    than de-identifying deliveries retried for ever."""
    path = config.spool.deidentify_key_file
    if path is None:
        return
    try:
        read_key_file(path)
    except RouterError as exc:
        raise ConfigError(source, [f"spool.deidentify_key_file: {exc}"]) from None


def check_secret_files(config: RouterConfig, source: str) -> None:
    """A DICOMweb destination's password_file or token_file, read as its deliveries will:
    a ConfigError now rather than a destination paused (`auth`) at its first delivery. Not
    at `run`: a secret mounted after the start is picked up by the next delivery."""
    problems = []
    for name, dest in config.destinations.items():
        for key in ("password_file", "token_file"):
            path = getattr(dest, key, None)
            problem = _secret_problem(path) if isinstance(path, Path) else None
            if problem is not None:
                problems.append(f"destinations.{name}.{key}: {problem}")
    if problems:
        raise ConfigError(source, problems)


def secret_env_notes(config: RouterConfig) -> list[str]:
    """A DICOMweb destination's password_env or token_env that this shell leaves unset or
    empty: a note, not an error, since `run` may start in another environment (a unit
    file's Environment=, a pod's env) than the shell checking the config."""
    notes = []
    for name, dest in config.destinations.items():
        for key in ("password_env", "token_env"):
            variable = getattr(dest, key, None)
            if isinstance(variable, str) and not os.environ.get(variable):
                notes.append(f"destinations.{name}.{key}: ${variable} is unset or empty here; "
                             f"the router's own environment must set it, or the destination "
                             f"pauses with auth at its first delivery")
    return notes


def _secret_problem(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text"
    return None if text.strip("\r\n") else f"{path} is empty"


def check_audit_file(config: RouterConfig, source: str) -> None:
    """audit.path, opened as the trail will: a ConfigError now rather than a router that runs
    and loses every audit message (a read-only filesystem, a folder it may not write)."""
    if not config.audit.enabled:
        return
    try:
        check_writable(config.audit.path)
    except OSError as exc:
        raise ConfigError(source, [
            f"audit.path: cannot write {config.audit.path} ({exc.strerror or exc})"]) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config  # `check-config FILE`, or --config FILE as elsewhere
    if path is None:
        print("dicom-router check-config: error: name the config file to check "
              "(dicom-router check-config FILE)", file=sys.stderr)
        return USAGE_ERROR
    if args.file and args.config and args.file != args.config:
        print(f"dicom-router check-config: error: two config files named ({args.file} and "
              f"--config {args.config}); name one", file=sys.stderr)
        return USAGE_ERROR
    args.config = path
    try:
        config = load_config(path)
        # The files and passwords `run` loads: a config that passes here must start.
        check_contexts(config)
        check_key_file(config, str(path))
        check_audit_file(config, str(path))
        check_secret_files(config, str(path))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return CONFIG_ERROR
    except TLSConfigError as exc:
        print(ConfigError(str(args.config), [str(exc)]), file=sys.stderr)
        return CONFIG_ERROR
    for note in expiry_warnings(config):  # it still works: renew before it does not
        print(f"dicom-router check-config: warning: {note}", file=sys.stderr)
    for note in drops_after_continue(config.rules):  # allowed, but easy to miss
        print(f"dicom-router check-config: warning: {note}", file=sys.stderr)
    for note in nested_quantifiers(config.rules):  # bounded, but refuses what it cuts
        print(f"dicom-router check-config: warning: {note}", file=sys.stderr)
    morphs = [*((f"rule {r.name!r}", r.morph) for r in config.rules),
              *((f"destination {n!r}", d.morph) for n, d in config.destinations.items())]
    for note in nested_morph_quantifiers(morphs):  # bounded, but a dead letter when cut
        print(f"dicom-router check-config: warning: {note}", file=sys.stderr)
    for note in shared_completions(config.rules):  # one hold of two, silently
        print(f"dicom-router check-config: warning: {note}", file=sys.stderr)
    shared_state = config.spool.shared_state_dir is not None
    for note in per_cell_completions(config.rules, shared_state):  # a study, per cell
        print(f"dicom-router check-config: warning: {note}", file=sys.stderr)
    for note in secret_env_notes(config):  # `run` may see another environment
        print(f"dicom-router check-config: note: {note}", file=sys.stderr)
    for note in shared_destinations(config.rules):  # what applies when rules share one
        print(f"dicom-router check-config: note: {note}", file=sys.stderr)
    for note in mapped_source_notes(config):  # taken as the IPv4 network they name
        print(f"dicom-router check-config: note: {note}", file=sys.stderr)
    from router.relay.move_targets import relay_move_notes  # here: the CLI loads no DICOM otherwise

    for note in relay_move_notes(config):  # moves the router refuses, to keep data private
        print(f"dicom-router check-config: note: {note}", file=sys.stderr)
    from workers.prepare_steps import copy_leaks  # pydicom only for this

    for note in copy_leaks(config):  # deliveries the workers refuse, to keep data private
        print(f"dicom-router check-config: warning: {note}", file=sys.stderr)
    for note in burned_in_defaults(config):  # a default that refuses what was sent before
        print(f"dicom-router check-config: warning: {note}", file=sys.stderr)
    for note in burned_in_policies(config):  # what the profile cannot do, and what happens
        print(f"dicom-router check-config: note: {note}", file=sys.stderr)
    print(summary(config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
        check_key_file(config, str(args.config))
        check_audit_file(config, str(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return CONFIG_ERROR
    setup_logging(config.log_level, config.log_format)
    log = logging.getLogger("router")
    from router.dicom.compat import require_supported

    try:  # an install that overrides pyproject.toml's pins: said now, not at first use
        require_supported()
    except RouterError as exc:
        log.error("cannot start: %s", exc)
        return 1
    origin = str(args.config) if args.config else "built-in default config"
    log.info("%s: %s", origin, summary(config))
    remove_stale_runtime_dirs()
    runtime_dir = create_runtime_dir()
    metrics_dir = runtime_dir / "metrics"
    metrics_dir.mkdir()
    (runtime_dir / "status").mkdir()
    # Before prometheus_client is first imported, here and in every spawned child.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from router.core.runtime import Runtime
    from router.service.supervisor import Supervisor

    try:
        return Supervisor(config, Runtime(runtime_dir), args.config).run()
    except (OSError, RouterError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


def _read_secret(what: str) -> str:
    """From the terminal without echo, or one line of standard input (scripts)."""
    secret = getpass.getpass(f"{what}: ") if sys.stdin.isatty() else sys.stdin.readline()
    secret = secret.rstrip("\r\n")
    if not secret:
        raise RouterError(f"empty {what}")
    return secret


def cmd_hash_passcode(args: argparse.Namespace) -> int:
    from router.acceptor.access import hash_passcode

    print(hash_passcode(_read_secret("passcode")))
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    from router.service.console.auth import hash_password

    print(hash_password(_read_secret("password")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-router", description=__doc__,
        epilog="--config may come before or after a command and its action. Bad "
               "command-line input is reported in one line with exit code 2; a config file "
               "that does not validate, with every problem in it and exit code 1.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="the router's YAML config file (run, check-config, status, "
                             "route-test, dead-letters, destinations)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[config_parent("YAML config file")],
                         help="run the router (built-in default config without --config)")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", parents=[config_parent()],
                           help="validate a config file and print every error")
    check.add_argument("file", type=Path, nargs="?", metavar="FILE",
                       help="the config file (or --config FILE)")
    check.set_defaults(func=cmd_check_config)
    cli_dead_letters.add_parser(sub)
    cli_destinations.add_parser(sub)
    peer_commands.add_send_parser(sub)
    peer_commands.add_echo_parser(sub)
    cli_status.add_parser(sub)
    cli_route_test.add_parser(sub)
    hashing = sub.add_parser("hash-passcode",
                             help="hash a passcode for listen.users (reads it from stdin)")
    hashing.set_defaults(func=cmd_hash_passcode)
    console_hash = sub.add_parser("hash-password",
                                  help="hash a console user's password (argon2id; reads it "
                                       "from stdin) for console.users[].password_hash")
    console_hash.set_defaults(func=cmd_hash_password)
    return parser


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: TextIO | None = None, line: str | None = None
                      ) -> None:
    """A library's warning (pydicom's "Expected explicit VR...") as one line for the
    operator, not Python's file:line and source line. `run` logs them instead
    (process_util.setup_logging)."""
    print(f"dicom-router: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:  # every command: each problem with its key, as check-config
        print(exc, file=sys.stderr)
        return CONFIG_ERROR
    except (RouterError, ValueError) as exc:
        # Bad input: an operator-facing message, never a traceback.
        print(f"dicom-router: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("dicom-router: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()


def _stdout_closed() -> int:
    """The reader went away (`... | head -1`): stop quietly, as Unix tools do. What is still
    buffered goes to /dev/null, or Python would complain when it flushes stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE  # what a shell shows for a tool that SIGPIPE ended


if __name__ == "__main__":
    sys.exit(main())
