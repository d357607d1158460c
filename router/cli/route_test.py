"""`dicom-router route-test`: what the router would do with these files, without sending them.

For each file, as if it came from the given calling AE, called AE and source address: which
rules match, the decision (forward, drop, reject, no route), and per destination what would
be morphed, de-identified or transcoded, and the priority and completion group.

Exit codes: 0 every file explained; 1 a file is not DICOM or cannot be read (the others are
still explained); 1 also for a config file that does not validate (every problem is listed);
2 bad arguments or no files.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from router.cli.common import argument, config_parent
from router.core.config import _check_ae_title, default_config, load_config
from router.service.route_preview import explain


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = sub.add_parser("route-test", help="show how files would be routed; sends nothing",
                          parents=[config_parent("router config (default: the built-in one)")])
    test.add_argument("files", nargs="+", type=Path, help="DICOM files or folders")
    # Checked as the acceptor would see them: a 17-character AE title or a source that is
    # no address could never arrive, and would only make every rule look unmatched.
    ae_title = argument(_check_ae_title)
    test.add_argument("--calling-ae", default="STORESCU", type=ae_title,
                      help="the sender's AE title")
    test.add_argument("--called-ae", type=ae_title,
                      help="the AE title called (default: the router's)")
    test.add_argument("--source", default="127.0.0.1", type=argument(_address),
                      help="the sender's IP address")
    test.set_defaults(func=cmd_route_test)


def cmd_route_test(args: argparse.Namespace) -> int:
    from pydicom.errors import InvalidDicomError

    # A bad config is a ConfigError: every problem, exit 1 (router.cli.main).
    config = default_config() if args.config is None else load_config(args.config)
    files = [p for path in args.files for p in _expand(path)]
    if not files:
        print("route-test: no files found", file=sys.stderr)
        return 2
    unreadable = 0
    for path in files:
        try:
            lines = explain(config, path, args.calling_ae, args.called_ae or config.ae_title,
                            args.source)
        except InvalidDicomError:
            unreadable += 1
            lines = [f"{path}: not DICOM: no DICOM Part 10 header (the 'DICM' prefix); "
                     "a sender could not send it"]
        except Exception as exc:  # one unreadable file must not hide the others
            unreadable += 1
            lines = [f"{path}: cannot be read as DICOM: {exc}"]
        # Printed outside the try: a closed stdout (| head) is not the file's fault.
        print("\n".join(lines), end="\n\n")
    return 1 if unreadable else 0


def _address(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _expand(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
