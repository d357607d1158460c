"""A peer's address as logs, limits, rules, the audit trail and the live status show it.

With its port, an IPv6 address goes in brackets (RFC 3986's form): "::1:11112" is
itself an IPv6 address (::0.1:11112), so a reader cannot tell where the port starts.

A listener on "::" (dual stack) accepts IPv4 connections too and sees their address
IPv4-mapped (`::ffff:10.1.2.3`): the same modality would then be logged and audited under
another address than on a "0.0.0.0" listener, and an audit repository searching for
10.1.2.3 would not find it. It is taken back to its IPv4 form at accept.
"""

from __future__ import annotations

import ipaddress
from typing import Any


def plain(address: str) -> str:
    """`address`, or its IPv4 form when it is an IPv4-mapped IPv6 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped) if mapped is not None else address


def plain_peer(peer: Any) -> Any:
    """An accept()ed (host, port, ...) tuple as (plain host, port); anything else as is."""
    if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[0], str):
        return (plain(peer[0]), peer[1])
    return peer


def host_port(host: str, port: int) -> str:
    """`host:port`, or `[host]:port` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
