"""`check-config` loads the TLS material `run` loads, and both name the key and file at fault.

Regression: check-config passed listen.tls and destination tls configs that `run` refused
(missing or non-PEM files, encrypted keys without a usable password, a key of another
certificate, `ciphers: NOPE`), and `run` said `cannot read None` for a missing file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli.main import main
from router.core.config import parse_config
from router.core.tls import TLSConfigError, check_contexts
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


@pytest.mark.parametrize("where", ["console", "dicomweb", "syslog_ca", "syslog_cert"])
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
