"""The arguments of the two commands that talk to a DICOM peer, `send` and `echo`.

Kept apart from router/cli/send.py and echo.py, which load pynetdicom and pydicom: parsing
the command line (and every process the supervisor spawns re-imports the `dicom-router`
script) must not pay for them. The commands themselves are imported when they run.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Callable
from pathlib import Path

from router.cli.common import lazy
from router.core.config import DEFAULT_MAX_PDU, ClientTLS, _check_ae_title
from router.core.errors import RouterError, TLSConfigError
from router.core.tls import client_context


def address(text: str) -> tuple[str, int]:
    from router.cli.send_association import parse_address  # only when `send` parses --to

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ae_title(text: str) -> str:
    try:
        return _check_ae_title(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number from {low} to {high}")
        return int(text)
    return parse


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", type=Path, metavar="FILE",
                        help="use TLS, verifying the peer against this CA bundle")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE",
                        help="client certificate for mutual TLS (with --tls-key)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE",
                        help="its private key (unencrypted)")


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_ca is None:
        if args.tls_cert or args.tls_key:
            raise RouterError("--tls-cert and --tls-key need --tls-ca (the peer's CA)")
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise RouterError("--tls-cert and --tls-key go together")
    mode = "mtls" if args.tls_cert else "tls"
    config = ClientTLS(mode=mode, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    try:
        return client_context(config, "--tls")
    except TLSConfigError as exc:
        # Name the option as typed (--tls-ca), not as a config key (--tls.ca).
        raise RouterError(str(exc).replace("--tls.", "--tls-", 1)) from None


def add_send_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "send", help="send DICOM files and folders to a peer, as they are (C-STORE)",
        description="Send DICOM files (folders recursively) without decoding them, with "
                    "progress and a summary. Exit 0: all stored; 1: some not stored; "
                    "2: usage error or no association.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    parser.add_argument("--to", required=True, type=address, metavar="HOST:PORT",
                        help="the peer to send to")
    parser.add_argument("--ae", type=ae_title, default="DICOM-SEND", metavar="CALLING",
                        help="our (calling) AE title (default DICOM-SEND)")
    parser.add_argument("--called-ae", type=ae_title, default="ANY-SCP", metavar="CALLED",
                        help="the peer's (called) AE title (default ANY-SCP)")
    add_tls_arguments(parser)
    parser.add_argument("--max-pdu", type=bounded(4096, 4_194_304), default=DEFAULT_MAX_PDU,
                        metavar="N", help=f"maximum PDU size we receive (default "
                                          f"{DEFAULT_MAX_PDU})")
    parser.add_argument("--associations", type=bounded(1, 64), default=1, metavar="N",
                        help="parallel associations, files split between them (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=lazy("router.cli.send:run"))


def add_echo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "echo", help="check that a DICOM peer answers (C-ECHO)",
        description="Send a C-ECHO to a DICOM peer. Exit 0: it answered Success; 1: another "
                    "status or no answer; 2: no association or bad arguments.")
    parser.add_argument("host", help="the peer's host name or address")
    parser.add_argument("port", type=bounded(1, 65535), help="the peer's port")
    parser.add_argument("--calling-ae", type=ae_title, default="DICOM-ECHO", metavar="AE",
                        help="our (calling) AE title (default DICOM-ECHO)")
    parser.add_argument("--called-ae", type=ae_title, default="ANY-SCP", metavar="AE",
                        help="the peer's (called) AE title (default ANY-SCP)")
    add_tls_arguments(parser)
    parser.add_argument("--timeout", type=bounded(1, 3600), default=10, metavar="SECONDS",
                        help="for the connection and each answer (default 10)")
    parser.set_defaults(func=lazy("router.cli.echo:run"))
