"""`check-config` loads the TLS material `run` loads, and both name the key and file at fault.

Regression: check-config passed listen.tls and destination tls configs that `run` refused
(missing or non-PEM files, encrypted keys without a usable password, a key of another
certificate, `ciphers: NOPE`), and `run` said `cannot read None` for a missing file."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from router.cli.main import main
from router.core.cert_dates import first_certificate_validity
from router.core.config import ClientTLS, ListenerTLS, parse_config
from router.core.errors import TLSConfigError
from router.core.tls import (
    check_contexts,
    client_context,
    failure_reason,
    failure_text,
    server_context,
)
from tests.pki import CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder, "ca")
    plain, other = ca.issue("plain", server=True), ca.issue("other", server=True)
    encrypted = ca.issue("enc", server=True, password=b"s3cret")
    (folder / "junk.pem").write_text("not a PEM file\n")
    (folder / "right.pass").write_text("s3cret\n")
    (folder / "wrong.pass").write_text("nope\n")
    return {"ca": ca.cert_path, "cert": plain.cert, "key": plain.key, "other_key": other.key,
            "enc_cert": encrypted.cert, "enc_key": encrypted.key, "junk": folder / "junk.pem",
            "right": folder / "right.pass", "wrong": folder / "wrong.pass",
            "missing": folder / "missing.pem"}


def _config(tmp_path: Path, listen_tls: dict[str, Any] | None = None,
            dest_tls: dict[str, Any] | None = None) -> Path:
    data: dict[str, Any] = {
        "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
    }
    if listen_tls is not None:
        data["listen"] = {"tls": {"mode": "tls", **listen_tls}}
    if dest_tls is not None:
        data["destinations"]["pacs"] = {"type": "dicom", "ae_title": "PACS", "host": "localhost",
                                        "port": 24999, "tls": {"mode": "tls", **dest_tls}}
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _listen(pki: dict[str, Path], **changes: Any) -> dict[str, Any]:
    tls: dict[str, Any] = {"cert": pki["cert"], "key": pki["key"], "ca": pki["ca"]}
    tls.update({k: pki.get(v, v) if isinstance(v, str) else v for k, v in changes.items()})
    return {k: str(v) if isinstance(v, Path) else v for k, v in tls.items()}


# (listen.tls changes, the start of the one problem; {x} is a file of the PKI)
LISTEN_CASES: list[tuple[dict[str, Any], str]] = [
    ({"cert": "missing"}, "listen.tls.cert: cannot read {missing}: No such file"),
    ({"key": "missing"}, "listen.tls.key: cannot read {missing}: No such file"),
    ({"cert": "junk"}, "listen.tls.cert: {junk} holds no PEM certificate"),
    ({"key": "junk"}, "listen.tls.key: {junk} holds no PEM private key"),
    ({"key": "other_key"}, "listen.tls.key: {other_key} is not the key of the certificate"),
    ({"cert": "enc_cert", "key": "enc_key"}, "listen.tls.key: {enc_key} is encrypted: give"),
    ({"cert": "enc_cert", "key": "enc_key", "key_password_file": "wrong"},
     "listen.tls.key_password_file: wrong password for the encrypted key {enc_key}"),
    ({"cert": "enc_cert", "key": "enc_key", "key_password_file": "missing"},
     "listen.tls.key_password_file: cannot read {missing}"),
    ({"cert": "enc_cert", "key": "enc_key", "key_password_env": "FIX_C_UNSET_PASSWORD"},
     "listen.tls.key_password_env: $FIX_C_UNSET_PASSWORD is not set"),
    ({"cert": "enc_cert", "key": "enc_key", "key_password_command": ["false"]},
     "listen.tls.key_password_command exited with 1"),
    ({"ca": "missing"}, "listen.tls.ca: cannot read {missing}: No such file"),
    ({"ca": "junk"}, "listen.tls.ca: {junk} holds no PEM certificate"),
    ({"ciphers": "NOPE"}, "listen.tls.ciphers: no cipher matches 'NOPE'"),
]


@pytest.mark.parametrize(("changes", "expected"), LISTEN_CASES)
def test_check_config_refuses_listener_tls_that_run_refuses(
    changes: dict[str, Any], expected: str, pki: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FIX_C_UNSET_PASSWORD", raising=False)
    path = _config(tmp_path, listen_tls=_listen(pki, **changes))

    assert main(["check-config", str(path)]) == 1

    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"invalid config {path}:"
    assert len(err) == 2 and err[1].startswith("  - " + expected.format(**pki)), err


@pytest.mark.parametrize(("ca", "expected"), [
    ("missing", "destinations.pacs.tls.ca: cannot read {missing}: No such file"),
    ("junk", "destinations.pacs.tls.ca: {junk} holds no PEM certificate"),
])
def test_check_config_refuses_a_destination_ca_that_run_refuses(
    ca: str, expected: str, pki: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, dest_tls={"ca": str(pki[ca])})

    assert main(["check-config", str(path)]) == 1

    assert capsys.readouterr().err.splitlines()[1].startswith("  - " + expected.format(**pki))


def test_good_tls_material_passes_check_config(
    pki: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listen = _listen(pki, cert="enc_cert", key="enc_key", key_password_file="right")
    path = _config(tmp_path, listen_tls=listen, dest_tls={"ca": str(pki["ca"])})

    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_a_directory_as_ca_is_a_clear_error_not_a_traceback(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    config = parse_config(yaml.safe_load(_config(tmp_path, dest_tls={"ca": str(tmp_path)})
                                         .read_text()))

    with pytest.raises(TLSConfigError, match=r"destinations\.pacs\.tls\.ca: cannot read .*: Is a"):
        check_contexts(config)


def _base(tmp_path: Path) -> dict[str, Any]:
    return {"destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
            "rules": [{"name": "all", "forward": ["keep"]}]}


@pytest.mark.parametrize("where", ["console", "dicomweb", "syslog_ca", "syslog_cert",
                                   "known_ae"])
def test_the_console_dicomweb_and_syslog_tls_material_is_checked_too(
        tmp_path: Path, pki: dict[str, Path], where: str) -> None:
    """These were loaded only when first used: a check-config that said ok, then a console
    that would not start, a DICOMweb destination whose every delivery failed, or an audit
    trail that never reached its syslog server."""
    data = _base(tmp_path)
    junk = str(pki["junk"])
    if where == "console":
        (tmp_path / "token").write_text("a-token-for-scripts\n")
        data["console"] = {"enabled": True, "port": 24998, "tls_cert": junk,
                           "tls_key": str(pki["key"]), "token_file": str(tmp_path / "token")}
        expected = "console"
    elif where == "dicomweb":
        data["destinations"]["web"] = {"type": "dicomweb", "url": "https://pacs.example/dicomweb",
                                       "ca": junk}
        expected = "destinations.web.ca"
    elif where == "known_ae":  # a relayed C-MOVE's destination: its client key
        data["known_aes"] = {"VIEWER": {"host": "127.0.0.1", "port": 24997, "tls": {
            "mode": "mtls", "ca": str(pki["ca"]), "cert": str(pki["cert"]),
            "key": str(pki["other_key"])}}}
        expected = "known_aes.VIEWER.tls.key"
    else:
        syslog: dict[str, Any] = {"host": "127.0.0.1", "transport": "tls"}
        syslog.update({"ca": junk} if where == "syslog_ca"
                      else {"cert": junk, "key": str(pki["key"])})
        data["audit"] = {"enabled": True, "path": str(tmp_path / "audit.jsonl"),
                         "syslog": syslog}
        expected = "audit.syslog.ca" if where == "syslog_ca" else "audit.syslog.cert"
    with pytest.raises(TLSConfigError, match=expected.replace(".", r"\.")):
        check_contexts(parse_config(data))
    good = _base(tmp_path)
    check_contexts(parse_config(good))


# --- the router's own certificate out of its dates ---------------------------------------------
# Regression: an expired (or not yet valid) listener certificate passed check-config and run
# (readyz 200); every client then refused it and each refusal was counted and logged as the
# modality's certificate_expired.

DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def dated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("dated")
    ca = CertificateAuthority(folder, "ca")
    local = {"server": True, "dns": ("localhost",)}
    return {"ca": ca,
            "expired": ca.issue("expired", valid=(-10 * DAY, -DAY), **local),
            "future": ca.issue("future", valid=(2 * DAY, 30 * DAY), **local),
            "soon": ca.issue("soon", valid=(-DAY, 5 * DAY), **local),
            "good": ca.issue("good", valid=(-DAY, 30 * DAY), **local)}


@pytest.mark.parametrize(("which", "says"), [
    ("expired", "expired on {after} (valid from {before} to {after}): every client would "
                "refuse it; renew it"),
    ("future", "is not valid before {before} (valid from {before} to {after})"),
])
def test_check_config_and_run_refuse_an_out_of_date_listener_certificate(
    which: str, says: str, dated: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    issued = dated[which]
    dates = first_certificate_validity(issued.cert.read_bytes())
    day = "%Y-%m-%d %H:%M UTC"
    expected = (f"listen.tls.cert: {issued.cert} " + says.format(
        before=dates.not_before.strftime(day), after=dates.not_after.strftime(day)))
    path = _config(tmp_path, {"cert": str(issued.cert), "key": str(issued.key)})
    assert main(["check-config", str(path)]) == 1
    assert expected in capsys.readouterr().err
    config = parse_config(yaml.safe_load(path.read_text()), str(path))
    with pytest.raises(TLSConfigError, match=r"listen\.tls\.cert: "):  # run and reload too
        check_contexts(config)


def test_check_config_warns_of_a_listener_certificate_that_expires_within_14_days(
    dated: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    soon = dated["soon"]
    path = _config(tmp_path, {"cert": str(soon.cert), "key": str(soon.key)})
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: listen.tls.cert: {soon.cert} expires on " in err
    assert "renew it and send SIGHUP" in err
    good = dated["good"]
    path = _config(tmp_path, {"cert": str(good.cert), "key": str(good.key)})
    assert main(["check-config", str(path)]) == 0
    assert "expires on" not in capsys.readouterr().err


def test_certificate_dates_are_read_as_openssl_reads_them(dated: dict[str, Any]) -> None:
    for name in ("expired", "future", "soon"):
        cert = x509.load_pem_x509_certificate(dated[name].cert.read_bytes())
        dates = first_certificate_validity(dated[name].cert.read_bytes())
        assert (dates.not_before, dates.not_after) == (cert.not_valid_before_utc,
                                                       cert.not_valid_after_utc)
    with pytest.raises(ValueError, match="no PEM certificate"):
        first_certificate_validity(b"not a certificate")


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[BaseException | None,
                                                                      BaseException | None]:
    """A real handshake over loopback: (the server's error, the client's error)."""
    errors: list[BaseException | None] = [None, None]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            sock, _ = listener.accept()
            try:
                server.wrap_socket(sock, server_side=True).close()
            except (OSError, ValueError) as exc:
                errors[0] = exc
            finally:
                sock.close()
        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                    client.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(1)  # TLS 1.3: the server's verdict on a client comes after the finish
        except (OSError, ValueError) as exc:
            errors[1] = exc
        thread.join(10)
    return errors[0], errors[1]


def test_the_peer_refusing_the_routers_certificate_is_not_its_own_fault(
    dated: dict[str, Any]
) -> None:
    ca, expired = dated["ca"], dated["expired"]
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # what `run` used to serve
    server.load_cert_chain(expired.cert, expired.key)
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    received, sent = _handshake(server, client)
    assert received is not None and sent is not None
    assert failure_reason(sent) == "certificate_expired"  # the client's own verification
    assert failure_reason(received) == "peer_refused_our_certificate"
    assert failure_text(received) == "the peer refused the router's certificate " \
        "(certificate_expired)"
    # A modality's expired certificate, refused by the router: still the modality's.
    good, old_client = dated["good"], ca.issue("old-ct", valid=(-10 * DAY, -DAY))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(good.cert, good.key)
    server.load_verify_locations(cafile=str(ca.cert_path))
    server.verify_mode = ssl.CERT_REQUIRED
    client.load_cert_chain(old_client.cert, old_client.key)
    received, _ = _handshake(server, client)
    assert received is not None
    assert failure_reason(received) == failure_text(received) == "certificate_expired"


def test_a_served_chain_is_refused_or_warned_of_by_its_soonest_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: a listener certificate file holding the leaf and an expired intermediate
    passed check-config, run and a reload (only the leaf's dates were read), and every
    client that trusts only the root then refused the router; the expiry gauge and warning
    showed the leaf's date, not the intermediate's that ends the chain first."""
    root = CertificateAuthority(tmp_path / "root", "root-ca")
    local = {"server": True, "dns": ("localhost",)}
    cases = {"expired": (-10 * DAY, -DAY), "soon": (-DAY, 5 * DAY), "good": (-DAY, 30 * DAY)}
    chains = {}
    for name, valid in cases.items():
        issuing = CertificateAuthority(tmp_path / name, f"{name}-issuing-ca", issuer=root,
                                       valid=valid)
        chains[name] = issuing.chain(issuing.issue("router", valid=(-DAY, 20 * DAY), **local))
    expired = chains["expired"]
    path = _config(tmp_path, {"cert": str(expired.cert), "key": str(expired.key)})
    assert main(["check-config", str(path)]) == 1
    assert (f"listen.tls.cert: {expired.cert} holds a CA certificate (number 2 of its chain) "
            "that expired on ") in capsys.readouterr().err
    with pytest.raises(TLSConfigError, match=r"number 2 of its chain"):  # run and reload too
        check_contexts(parse_config(yaml.safe_load(path.read_text()), str(path)))
    soon = chains["soon"]
    path = _config(tmp_path, {"cert": str(soon.cert), "key": str(soon.key)})
    assert main(["check-config", str(path)]) == 0
    assert f"warning: listen.tls.cert: {soon.cert} expires on " in capsys.readouterr().err
    good = chains["good"]
    path = _config(tmp_path, {"cert": str(good.cert), "key": str(good.key)})
    assert main(["check-config", str(path)]) == 0
    assert "expires on" not in capsys.readouterr().err


def test_a_chain_that_does_not_reach_a_ca_in_ca_is_unknown_ca_not_a_bad_certificate(
    tmp_path: Path
) -> None:
    """Regression: with only the issuing (intermediate) CA in `ca`, a good certificate sent
    with its chain was counted and logged as bad_certificate ("unable to get issuer
    certificate"): the root the chain ends at is missing from `ca`, as for a stranger's."""
    root = CertificateAuthority(tmp_path / "root", "root-ca")
    issuing = CertificateAuthority(tmp_path / "issuing", "issuing-ca", issuer=root)
    pacs = issuing.chain(issuing.issue("pacs", dns=("localhost",), server=True))
    modality = issuing.chain(issuing.issue("ct1"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pacs.cert, pacs.key)
    client = client_context(ClientTLS(mode="tls", ca=issuing.cert_path), "destinations.x.tls")
    _, sent = _handshake(server, client)
    assert sent is not None and failure_reason(sent) == "unknown_ca"
    listener = server_context(ListenerTLS(mode="mtls", cert=pacs.cert, key=pacs.key,
                                          ca=issuing.cert_path))
    modality_side = ssl.create_default_context(cafile=str(root.cert_path))
    modality_side.load_cert_chain(modality.cert, modality.key)
    received, _ = _handshake(listener, modality_side)
    assert received is not None and failure_reason(received) == "unknown_ca"
