"""`check-config` reads a DICOMweb destination's password_file or token_file as its
deliveries will, and names the key and the file that cannot be read (exit 1, no traceback);
an unset password_env or token_env gets a note (exit 0).

Regression: a missing password file passed check-config; the router then paused the
destination at its first delivery."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router.cli.main import main


def _config(tmp_path: Path, **web: str) -> Path:
    data = {
        "destinations": {"web": {"type": "dicomweb", "url": "http://pacs.example/dicom-web",
                                 **web}},
        "rules": [{"name": "all", "forward": ["web"]}],
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("content", "expected"), [
    (None, "destinations.web.password_file: cannot read {file}: No such file or directory"),
    ("", "destinations.web.password_file: {file} is empty"),
    (b"\xff\xfe", "destinations.web.password_file: {file} is not UTF-8 text"),
])
def test_an_unreadable_password_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes | None,
    expected: str,
) -> None:
    secret = tmp_path / "password"
    if isinstance(content, bytes):
        secret.write_bytes(content)
    elif content is not None:
        secret.write_text(content)
    path = _config(tmp_path, auth="basic", username="router", password_file=str(secret))

    assert main(["check-config", str(path)]) == 1

    err = capsys.readouterr().err
    assert "  - " + expected.format(file=secret) in err.splitlines(), err
    assert "Traceback" not in err


def test_a_token_file_that_cannot_be_read_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder where the file should be: unreadable for root too (CI runs as root)."""
    token = tmp_path / "token"
    token.mkdir()
    path = _config(tmp_path, auth="bearer", token_file=str(token))

    assert main(["check-config", str(path)]) == 1

    err = capsys.readouterr().err
    assert f"destinations.web.token_file: cannot read {token}: Is a directory" in err, err
    assert "Traceback" not in err


def test_a_readable_secret_file_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    path = _config(tmp_path, auth="bearer", token_file=str(token))

    assert main(["check-config", str(path)]) == 0


@pytest.mark.parametrize(("auth", "key"), [("basic", "password_env"), ("bearer", "token_env")])
@pytest.mark.parametrize("value", [None, ""])
def test_an_unset_secret_variable_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    auth: str, key: str, value: str | None,
) -> None:
    """Regression: an unset password_env passed check-config without a word; the router then
    paused the destination (`auth`) at its first delivery. A note, exit 0: the router's own
    environment (a unit file, a pod) may differ from the shell's."""
    if value is None:
        monkeypatch.delenv("NC_WEB_SECRET", raising=False)
    else:
        monkeypatch.setenv("NC_WEB_SECRET", value)
    web = {"auth": auth, key: "NC_WEB_SECRET"} | ({"username": "router"} if auth == "basic"
                                                 else {})
    path = _config(tmp_path, **web)

    assert main(["check-config", str(path)]) == 0

    err = capsys.readouterr().err
    assert (f"dicom-router check-config: note: destinations.web.{key}: $NC_WEB_SECRET is "
            "unset or empty here") in err, err


def test_a_set_secret_variable_is_not_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NC_WEB_SECRET", "s")
    path = _config(tmp_path, auth="bearer", token_env="NC_WEB_SECRET")

    assert main(["check-config", str(path)]) == 0

    assert "NC_WEB_SECRET" not in capsys.readouterr().err
