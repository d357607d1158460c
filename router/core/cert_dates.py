"""The validity dates of a PEM certificate, read from its DER encoding.

The ssl module shows a certificate's dates only for a verified peer or a CA certificate, and
the router must check its own leaf before it serves it; a few lines of DER walking spare a
runtime dependency on a crypto library.
"""

from __future__ import annotations

import datetime
import re
import ssl
from dataclasses import dataclass

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_UTC_TIME, _GENERALIZED_TIME, _SEQUENCE, _VERSION = 0x17, 0x18, 0x30, 0xA0


@dataclass(frozen=True)
class Validity:
    not_before: datetime.datetime
    not_after: datetime.datetime


def first_certificate_validity(pem: bytes) -> Validity:
    """The dates of the first certificate in `pem` (the leaf of a chain file).
    ValueError if there is none or it is not well-formed DER."""
    return certificate_validities(pem)[0]


def certificate_validities(pem: bytes) -> list[Validity]:
    """The dates of every certificate in `pem`, in file order (a chain file: the leaf, then
    the CA certificates it is served with). ValueError as first_certificate_validity."""
    found = _PEM.findall(pem)
    if not found:
        raise ValueError("no PEM certificate")
    dates = []
    for block in found:
        der = ssl.PEM_cert_to_DER_cert(block.decode("ascii"))
        try:
            dates.append(_validity(der))
        except IndexError:
            raise ValueError("truncated certificate") from None
    return dates


def _validity(der: bytes) -> Validity:
    # Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    #   serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... } }
    _, tbs, _ = _item(der, _item(der, 0)[1])
    tag, start, end = _item(der, tbs)
    if tag == _VERSION:
        tag, start, end = _item(der, end)
    for _ in range(3):  # serialNumber, signature, issuer
        tag, start, end = _item(der, end)
    if tag != _SEQUENCE:
        raise ValueError("no validity")
    before_tag, before_start, before_end = _item(der, start)
    after_tag, after_start, after_end = _item(der, before_end)
    return Validity(_time(before_tag, der[before_start:before_end]),
                    _time(after_tag, der[after_start:after_end]))


def _item(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the contents, end of the contents) of the DER item at `at`."""
    tag, length = der[at], der[at + 1]
    start = at + 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[start:start + size], "big")
        start += size
    if start + length > len(der):
        raise ValueError("truncated certificate")
    return tag, start, start + length


def _time(tag: int, value: bytes) -> datetime.datetime:
    text = value.decode("ascii")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ, years 1950-2049 (RFC 5280 4.1.2.5.1)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError("no validity time")
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)
