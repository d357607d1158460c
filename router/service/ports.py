"""Listening addresses checked before anything is spawned: a port that cannot be bound is a
configuration error to report once, naming the address, not a child that crash-loops."""

from __future__ import annotations

import errno
import socket

from router.core.errors import RouterError

# A spawned child exits with this code when it cannot bind its listening address (EX_CONFIG
# of sysexits.h): the supervisor then stops the router instead of restarting the child.
EXIT_CANNOT_BIND = 78

_HINTS = {
    errno.EADDRINUSE: "another program (or another router) listens there: stop it or "
                      "choose another port",
    errno.EADDRNOTAVAIL: "no network interface of this machine has that address",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE",
}


def describe(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_bindable(host: str, port: int, what: str, key: str) -> None:
    """Bind (with SO_REUSEADDR, as the real listeners do) and close at once; RouterError
    naming the address, the config key and what to do when the bind fails."""
    where = f"{what} on {describe(host, port)} ({key})"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise RouterError(f"cannot listen for {where}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            hint = _HINTS.get(exc.errno or 0)
            raise RouterError(f"cannot listen for {where}: {exc.strerror}"
                              + (f"; {hint}" if hint else "")) from None


def is_bind_failure(exc: BaseException) -> bool:
    """Whether an exception escaping a child's entry point is a listening socket's bind."""
    if not isinstance(exc, OSError) or exc.filename is not None:
        return False
    return exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
