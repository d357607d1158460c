"""A TLS peer's certificate as text: subject and issuer as RFC 4514 text, from the ssl
module's decoded form, and its SHA-256 fingerprint.

The audit trail and the logs name a TLS peer by this text, so it must read one way only: a
CN "Smith, John" is one attribute, not two, and a CN holding "x,CN=admin" cannot pass for a
second CN. Written by hand because `cryptography` is only a test dependency here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

# RFC 4514 section 3: the registered short names; other attributes keep OpenSSL's name.
_SHORT = {
    "commonName": "CN", "localityName": "L", "stateOrProvinceName": "ST",
    "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
    "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID",
}
_SPECIAL = set('"+,;<>\\')

RDN = Iterable[tuple[str, str]]


def rfc4514(name: Iterable[RDN]) -> str:
    """`name` as getpeercert() gives it (RDNs in certificate order, each a tuple of
    (attribute, value) pairs): RFC 4514 lists the RDNs last first, joins the attributes of a
    multi-valued RDN with "+", and escapes the values."""
    rdns = ["+".join(f"{_SHORT.get(key, key)}={escape(value)}" for key, value in rdn)
            for rdn in name]
    return ",".join(reversed(rdns))


def escape(value: str) -> str:
    """RFC 4514 section 2.4: a backslash before the special characters, a leading "#" or
    space and a trailing space; NUL and other unprintable characters (controls, line
    separators) as \\XX hex pairs of their UTF-8 bytes, so that none reaches a log or a
    reader raw."""
    out = []
    last = len(value) - 1
    for i, char in enumerate(value):
        if char in _SPECIAL or (i == 0 and char in "# ") or (i == last and char == " "):
            out.append("\\" + char)
        elif not char.isprintable():
            out.append("".join(f"\\{byte:02X}" for byte in char.encode("utf-8")))
        else:
            out.append(char)
    return "".join(out)


def certificate_text(cert: dict[str, Any] | None, der: bytes | None) -> str | None:
    """How the audit trail names a TLS peer, e.g. `CN=ct1; issuer=CN=Site CA; sha256=AB:..`.
    A subject alone does not tell two certificates apart (a rogue CA can issue the same CN):
    the issuer and the fingerprint (as `openssl x509 -fingerprint -sha256` prints it) do.
    RFC 4514 escapes every ";" in a name, so the text splits at "; " one way only."""
    if not cert:
        return None
    text = rfc4514(cert.get("subject", ()))
    text += f"; issuer={rfc4514(cert.get('issuer', ()))}"
    if der:
        text += "; sha256=" + ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())
    return text
