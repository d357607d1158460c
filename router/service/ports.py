"""Listening addresses checked before anything is spawned: a port that cannot be bound is a
configuration error to report once, naming the address, not a child that crash-loops."""

from __future__ import annotations

import errno
import socket

from router.core.errors import RouterError
from router.core.peer_address import host_port

# A spawned child exits with this code when it cannot bind its listening address (EX_CONFIG
# of sysexits.h): the supervisor then stops the router instead of restarting the child.
EXIT_CANNOT_BIND = 78

_HINTS = {
    errno.EADDRINUSE: "another program (or another router) listens there: stop it or "
                      "choose another port",
    errno.EADDRNOTAVAIL: "no network interface of this machine has that address",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE",
}


def listen_family(host: str) -> socket.AddressFamily:
    """The address family a listener on `host` needs, as _bound resolves it: AF_INET6 for an
    IPv6 address ("::1", "::") or a name that resolves to one. socketserver's servers assume
    AF_INET, which cannot bind an IPv6 address at all."""
    if not host:
        return socket.AF_INET  # socketserver's "" is 0.0.0.0
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]


def check_bindable(host: str, port: int, what: str, key: str) -> None:
    """Bind (with SO_REUSEADDR, as the real listeners do, and never SO_REUSEPORT: a port
    another program or router listens on, even with SO_REUSEPORT, fails here) and close at
    once; RouterError naming the address, the config key and what to do when it fails."""
    _bound(host, port, what, key, reuse_port=False).close()


def listening_socket(host: str, port: int, backlog: int, what: str, key: str) -> socket.socket:
    """A listening socket with SO_REUSEPORT: one per acceptor on the same port, the kernel
    spreading new connections over them. Check the port with check_bindable first."""
    sock = _bound(host, port, what, key, reuse_port=True)
    sock.listen(backlog)
    return sock


def _bound(host: str, port: int, what: str, key: str, reuse_port: bool) -> socket.socket:
    where = f"{what} on {host_port(host, port)} ({key})"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise RouterError(f"cannot listen for {where}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = _HINTS.get(exc.errno or 0)
        raise RouterError(f"cannot listen for {where}: {exc.strerror}"
                          + (f"; {hint}" if hint else "")) from None
    return sock


def is_bind_failure(exc: BaseException) -> bool:
    """Whether an exception escaping a child's entry point is a listening socket's bind."""
    if not isinstance(exc, OSError) or exc.filename is not None:
        return False
    return exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
