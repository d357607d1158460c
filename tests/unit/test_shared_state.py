"""router/service/preflight.py check_shared_state: the state a later association needs
(storage commitments, the upstream of each N-CREATE) in spool.shared_state_dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.core.config import RouterConfig, parse_config
from router.core.errors import RouterError
from router.relay.state import Commitments
from router.service.preflight import check_shared_state


def config(spool: Path, shared: Path | None) -> RouterConfig:
    settings: dict[str, object] = {"path": str(spool)}
    if shared is not None:
        settings["shared_state_dir"] = str(shared)
    return parse_config({"spool": settings, "destinations": {"pacs": {
        "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
        "rules": [{"name": "all", "forward": ["pacs"]}]})


def test_a_cell_that_starts_sharing_brings_its_pending_commitments(tmp_path: Path) -> None:
    """Setting spool.shared_state_dir on a cell with commitments pending on its spool left
    them behind: their results, reaching the shared folder, were refused as unknown."""
    spool, shared = tmp_path / "spool", tmp_path / "shared"
    Commitments(spool / "commitments").remember("1.2.3", "CT1")
    (spool / "n-instances").mkdir(parents=True)
    (spool / "n-instances" / "ab12").write_text("ris2")
    (spool / "commitments" / ".123-1.2.9.json").write_text("torn")  # a crash's temporary

    check_shared_state(config(spool, shared))

    moved = Commitments(shared / "commitments").take("1.2.3")
    assert moved is not None and moved.requester_ae == "CT1"
    assert (shared / "n-instances" / "ab12").read_text() == "ris2"
    assert not (spool / "commitments" / "1.2.3.json").exists()
    assert not (shared / "commitments" / ".123-1.2.9.json").exists()


def test_a_record_the_shared_folder_has_already_is_left_in_the_spool(tmp_path: Path) -> None:
    spool, shared = tmp_path / "spool", tmp_path / "shared"
    (spool / "n-instances").mkdir(parents=True)
    (spool / "n-instances" / "ab12").write_text("ris1")
    (shared / "n-instances").mkdir(parents=True)
    (shared / "n-instances" / "ab12").write_text("ris2")

    check_shared_state(config(spool, shared))

    assert (shared / "n-instances" / "ab12").read_text() == "ris2"
    assert (spool / "n-instances" / "ab12").read_text() == "ris1"


def test_without_a_shared_folder_the_state_stays_in_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    Commitments(spool / "commitments").remember("1.2.3", "CT1")
    check_shared_state(config(spool, None))
    assert (spool / "commitments" / "1.2.3.json").exists()
    assert not (spool / "move-instances").exists()  # no cell to hand instances to


def test_a_cell_that_starts_sharing_leaves_its_moves_behind(tmp_path: Path) -> None:
    """The relayed C-MOVEs a spool's moves/ names ended with the run that relayed them,
    and their owners' tags name no cell, which another cell would judge by its own pids."""
    spool, shared = tmp_path / "spool", tmp_path / "shared"
    (spool / "moves").mkdir(parents=True)
    (spool / "moves" / "57").write_text("4242.1.0badcafe DICOM-ROUTER\nPACS\npacs")
    check_shared_state(config(spool, shared))
    assert sorted(p.name for p in shared.iterdir()) == [
        "commitments", "move-instances", "moves", "n-instances"]
    assert list((shared / "moves").iterdir()) == []
    assert (spool / "moves" / "57").exists()


def test_a_shared_folder_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match=r"spool.shared_state_dir: cannot write /proc/"):
        check_shared_state(config(tmp_path / "spool", Path("/proc/nope")))
