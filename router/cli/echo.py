"""`dicom-router echo HOST PORT`: is a DICOM peer there and does it accept us (C-ECHO)?

Exit codes: 0 the peer answered Success, 1 it answered another status or no answer came,
2 no association (connection refused, association rejected, TLS failure) or bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

from router.cli.common import USAGE_ERROR
from router.cli.send import _ae_title, _bounded, add_tls_arguments, tls_context
from router.cli.send_association import AssociationError, Peer, echo
from router.core.errors import RouterError
from router.dicom.net import configure_pynetdicom


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "echo", help="check that a DICOM peer answers (C-ECHO)",
        description="Send a C-ECHO to a DICOM peer. Exit 0: it answered Success; 1: another "
                    "status or no answer; 2: no association or bad arguments.")
    parser.add_argument("host", help="the peer's host name or address")
    parser.add_argument("port", type=_bounded(1, 65535), help="the peer's port")
    parser.add_argument("--calling-ae", type=_ae_title, default="DICOM-ECHO", metavar="AE",
                        help="our (calling) AE title (default DICOM-ECHO)")
    parser.add_argument("--called-ae", type=_ae_title, default="ANY-SCP", metavar="AE",
                        help="the peer's (called) AE title (default ANY-SCP)")
    add_tls_arguments(parser)
    parser.add_argument("--timeout", type=_bounded(1, 3600), default=10, metavar="SECONDS",
                        help="for the connection and each answer (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_pynetdicom()
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # failures are reported here
    peer = Peer(args.host, args.port, called_ae=args.called_ae, calling_ae=args.calling_ae,
                connect_timeout=args.timeout, acse_timeout=args.timeout,
                dimse_timeout=args.timeout, tls=tls_context(args))
    try:
        status = echo(peer)
    except AssociationError as exc:
        print(f"dicom-router echo: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except RouterError as exc:
        print(f"dicom-router echo: {exc}", file=sys.stderr)
        return 1
    if status != 0:
        print(f"dicom-router echo: {peer} answered 0x{status:04X}", file=sys.stderr)
        return 1
    print(f"{args.called_ae}@{peer} answered the C-ECHO: Success")
    return 0
