"""A TLS peer's subject reads one way only: RFC 4514 text, checked against `cryptography`.

Regression: the subject was the attributes joined with "," unescaped, in certificate order:
a CN "Smith, John" read as two attributes, and a CN "x,CN=admin" as a second CN."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from router.core.dn_text import certificate_text, escape
from router.core.tls import subject_text

NOW = datetime.datetime.now(datetime.UTC)


def _decoded(tmp_path: Path, name: x509.Name) -> dict[str, object]:
    """The certificate as getpeercert() hands it over (the ssl module's own decoder)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    path = tmp_path / "peer.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    decoded: dict[str, object] = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    return decoded


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


@pytest.mark.parametrize("common_name", [
    "Smith, John", "x,CN=admin", 'a "quoted" <tag>; b+c\\d', "#hash", " padded ", "plain",
])
def test_subject_is_rfc4514_text(tmp_path: Path, common_name: str) -> None:
    name = _name((NameOID.COUNTRY_NAME, "DE"), (NameOID.ORGANIZATION_NAME, "Hospital, Inc."),
                 (NameOID.ORGANIZATIONAL_UNIT_NAME, "Radiology"),
                 (NameOID.COMMON_NAME, common_name))
    assert subject_text(_decoded(tmp_path, name)) == name.rfc4514_string()


def test_a_comma_in_a_common_name_stays_in_it(tmp_path: Path) -> None:
    decoded = _decoded(tmp_path, _name((NameOID.COMMON_NAME, "x,CN=admin")))
    assert subject_text(decoded) == "CN=x\\,CN=admin"


def test_unprintable_characters_are_hex_escaped() -> None:
    assert escape("a\nb\x00c\u2028") == "a\\0Ab\\00c\\E2\\80\\A8"
    assert escape("Müller") == "Müller"


def test_certificate_text_names_subject_issuer_and_fingerprint(tmp_path: Path) -> None:
    """Regression: the audit trail had the subject only, the same for a rogue CA's twin."""
    name = _name((NameOID.ORGANIZATION_NAME, "Site; Inc"), (NameOID.COMMON_NAME, "ct1"))
    decoded = _decoded(tmp_path, name)
    pem = x509.load_pem_x509_certificate((tmp_path / "peer.pem").read_bytes())
    der = pem.public_bytes(serialization.Encoding.DER)
    fingerprint = ":".join(f"{b:02X}" for b in pem.fingerprint(hashes.SHA256()))
    assert certificate_text(decoded, der) == \
        f"CN=ct1,O=Site\\; Inc; issuer=CN=ct1,O=Site\\; Inc; sha256={fingerprint}"
    assert certificate_text({}, None) is None  # no certificate (mode tls)
