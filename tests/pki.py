"""A throwaway PKI for tests: CAs, server and client certificates, expired ones, encrypted keys."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class CertificateAuthority:
    def __init__(self, folder: Path, name: str, *, issuer: CertificateAuthority | None = None,
                 valid: tuple[datetime.timedelta, datetime.timedelta] | None = None) -> None:
        """A root CA, or with `issuer` an intermediate CA it signs; `valid` as in `issue`."""
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.name = name
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start, end = valid or (-datetime.timedelta(days=1), datetime.timedelta(days=30))
        self.certificate = (
            x509.CertificateBuilder().subject_name(subject)
            .issuer_name(issuer.certificate.subject if issuer else subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW + start).not_valid_after(NOW + end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(issuer.key if issuer else self.key, hashes.SHA256())
        )
        self.cert_path = folder / f"{name}.pem"
        self.cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def chain(self, issued: Issued) -> Issued:
        """`issued` with its certificate file holding the leaf, then this CA's certificate and
        its issuers' up to the root (left out: clients have it), as servers serve them."""
        path = issued.cert.with_name(f"{issued.cert.stem}-chain.crt")
        parts, ca = [issued.cert.read_bytes()], self
        while ca.issuer is not None:
            parts.append(ca.cert_path.read_bytes())
            ca = ca.issuer
        path.write_bytes(b"".join(parts))
        return Issued(path, issued.key)

    def issue(self, common_name: str, *, dns: tuple[str, ...] = (), ip: str | None = None,
              server: bool = False, expired: bool = False, password: bytes | None = None,
              file_stem: str | None = None,
              valid: tuple[datetime.timedelta, datetime.timedelta] | None = None) -> Issued:
        """`valid`: (not before, not after) from now, instead of a month or `expired`."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        if ip is not None:
            import ipaddress

            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        start = NOW - datetime.timedelta(days=10 if expired else 1)
        end = NOW - datetime.timedelta(days=1) if expired else NOW + datetime.timedelta(days=30)
        if valid is not None:
            start, end = NOW + valid[0], NOW + valid[1]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = file_stem or common_name
        cert_path = self.folder / f"{stem}.crt"
        key_path = self.folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password
            else serialization.NoEncryption())
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8, encryption))
        return Issued(cert_path, key_path)

    def revocation_list(self, path: Path, revoked: tuple[Issued, ...]) -> Path:
        """Write a PEM CRL, signed by this CA, listing the `revoked` certificates."""
        builder = (
            x509.CertificateRevocationListBuilder().issuer_name(self.certificate.subject)
            .last_update(NOW - datetime.timedelta(hours=1))
            .next_update(NOW + datetime.timedelta(days=7))
        )
        for issued in revoked:
            serial = x509.load_pem_x509_certificate(issued.cert.read_bytes()).serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(NOW - datetime.timedelta(minutes=5)).build())
        crl = builder.sign(self.key, hashes.SHA256())
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path
