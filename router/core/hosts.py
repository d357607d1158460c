"""A host in the config: a name, an IPv4 address or an IPv6 address, as getaddrinfo takes it.

An IPv6 address is written bare (`::1`, `fe80::1%eth0`), never in URL brackets: `[::1]`
resolves to nothing, and a destination written so was retried for ever ("Name or service
not known") after check-config said ok. A name holds no `:`, so a host with one that is not
an IPv6 address is a typo, often `host:port`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator


def check_host(value: str) -> str:
    """`value` if getaddrinfo could take it as written; ValueError saying what to write."""
    bare = value.strip()
    if bare.startswith("[") and bare.endswith("]"):
        raise ValueError(f"{value[:100]!r}: write an IPv6 address without brackets "
                         f"({bare[1:-1][:100]})")
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ValueError(f"{value[:100]!r} is not an IPv6 address, and a host name holds "
                             "no ':' (a port goes in `port`)") from None
    return value


Host = Annotated[str, AfterValidator(check_host)]
