"""A peer's address as logs, limits, rules, the audit trail and the live status show it.

With its port, an IPv6 address goes in brackets (RFC 3986's form): "::1:11112" is
itself an IPv6 address (::0.1:11112), so a reader cannot tell where the port starts.

A listener on "::" (dual stack) accepts IPv4 connections too and sees their address
IPv4-mapped (`::ffff:10.1.2.3`): the same modality would then be logged and audited under
another address than on a "0.0.0.0" listener, and an audit repository searching for
10.1.2.3 would not find it. It is taken back to its IPv4 form at accept. So is a configured
network written in that form (`::ffff:10.0.0.0/104` in listen.allowed_sources or a rule's
source): it is checked as the IPv4 network it names (10.0.0.0/8), which it would otherwise
never hold.
"""

from __future__ import annotations

import ipaddress
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped IPv6 addresses (RFC 4291)


def plain(address: str) -> str:
    """`address`, or its IPv4 form when it is an IPv4-mapped IPv6 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped) if mapped is not None else address


def source_network(text: str) -> IPNetwork:
    """A configured source network, an IPv4-mapped one as its IPv4 network (ValueError for
    no network)."""
    network = ipaddress.ip_network(text)
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # inside ::ffff:0:0/96
        return ipaddress.IPv4Network((mapped, network.prefixlen - _MAPPED.prefixlen))
    return network


def mapped_sources(entries: list[str] | None) -> list[tuple[str, IPNetwork]]:
    """The entries written as IPv4-mapped networks, each with what it is checked as."""
    found = [(entry, source_network(entry)) for entry in entries or []]
    return [(entry, network) for entry, network in found if network.version == 4
            and ipaddress.ip_network(entry).version == 6]


def plain_peer(peer: Any) -> Any:
    """An accept()ed (host, port, ...) tuple as (plain host, port); anything else as is."""
    if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[0], str):
        return (plain(peer[0]), peer[1])
    return peer


def host_port(host: str, port: int) -> str:
    """`host:port`, or `[host]:port` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
