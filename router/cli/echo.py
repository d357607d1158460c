"""`dicom-router echo HOST PORT`: is a DICOM peer there and does it accept us (C-ECHO)?

Exit codes: 0 the peer answered Success, 1 it answered another status or no answer came,
2 no association (connection refused, association rejected, TLS failure) or bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

from router.cli.common import USAGE_ERROR
from router.cli.peer_commands import tls_context
from router.cli.send_association import AssociationError, Peer, echo
from router.core.errors import RouterError
from router.dicom.net import configure_pynetdicom


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
