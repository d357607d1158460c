"""Every `dicom-router` command that takes --config says the same of a config file that does
not validate: every problem with its key, and exit 1 (as `run` and `check-config` always
did). Bad command-line input stays one line with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli.main import main

BAD = "listen: {port: 99999}\nbogus: 1\n"
COMMANDS = {
    "run": ["run"],
    "check-config": ["check-config"],
    "status": ["status", "--once"],
    "route-test": ["route-test", "FILE"],
    "dead-letters": ["dead-letters", "list"],
    "destinations": ["destinations", "list"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_invalid_config_lists_every_problem_and_exits_1(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(BAD)
    args = [str(config) if a == "FILE" else a for a in COMMANDS[command]]
    assert main([*args, "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"invalid config {config}:",
                                "  - listen.port: Input should be less than or equal to 65535",
                                "  - bogus: unknown key",
                                "  - rules: at least one rule is needed, or nothing is ever "
                                "routed"], err
    assert out == ""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_config_file_that_cannot_be_read_is_exit_1(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "nope.yaml"
    args = [str(tmp_path) if a == "FILE" else a for a in COMMANDS[command]]
    assert main([*args, "--config", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"invalid config {config}:", "  - cannot read the file: No such file or directory"]


def test_bad_command_line_input_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["route-test", "x.dcm", "--source", "notanip"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.splitlines()  # argparse's usage line, then the error
    assert err[-1].startswith("dicom-router route-test: error: argument --source"), err


def test_dead_letters_of_a_router_that_never_ran_are_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--config was passed: "pass the router's --config" was wrong advice."""
    config = tmp_path / "router.yaml"
    spool = tmp_path / "spool"
    config.write_text(f"spool: {{path: {spool}}}\n"
                      f"destinations: {{f: {{type: folder, path: {tmp_path / 'out'}}}}}\n"
                      "rules: [{name: all, forward: [f]}]\n")
    assert main(["dead-letters", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out == f"no dead letters: the router has not run with the spool at {spool} yet\n"
    assert main(["dead-letters", "replay", "0000000000000002bbbbbbbb", "--config",
                 str(config)]) == 2
    assert "the router has not run with the spool at" in capsys.readouterr().err
    assert not spool.exists()  # looking created nothing
