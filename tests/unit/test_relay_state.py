"""router/relay/state.py: relayed C-MOVE registry and pending storage commitments."""

from __future__ import annotations

from pathlib import Path

from router.relay.state import Commitments, MoveRelays


def test_pending_commitments_survive_a_restart_and_are_taken_once(tmp_path: Path) -> None:
    folder = tmp_path / "commitments"
    Commitments(folder).remember("1.2.3.4", "CT1")
    after_restart = Commitments(folder)
    taken = after_restart.take("1.2.3.4")
    assert taken is not None and taken.requester_ae == "CT1"
    assert after_restart.take("1.2.3.4") is None
    assert Commitments(folder).take("1.2.3.4") is None  # taken is gone from disk too


def test_an_undelivered_result_waits_for_the_upstreams_retry(tmp_path: Path) -> None:
    commitments = Commitments(tmp_path)
    commitments.remember("1.2.3.5", "CT1")
    taken = commitments.take("1.2.3.5")
    assert taken is not None
    commitments.restore("1.2.3.5", taken)
    assert Commitments(tmp_path).take("1.2.3.5") is not None


def test_a_hostile_transaction_uid_never_becomes_a_file(tmp_path: Path) -> None:
    commitments = Commitments(tmp_path)
    commitments.remember("../../etc/passwd", "CT1")
    assert list(tmp_path.iterdir()) == []
    assert commitments.take("../../etc/passwd") is not None  # in memory still


def test_unreadable_files_are_dropped_at_load(tmp_path: Path) -> None:
    (tmp_path / "1.2.3.json").write_text("{not json")
    assert Commitments(tmp_path).take("1.2.3") is None
    assert not (tmp_path / "1.2.3.json").exists()


def test_concurrent_moves_get_distinct_message_ids_and_only_their_instances() -> None:
    moves = MoveRelays()
    first, second = moves.open("DICOM-ROUTER"), moves.open("DICOM-ROUTER")
    assert first.message_id != second.message_id
    assert moves.find(first.message_id, "DICOM-ROUTER ") is first  # AE titles are padded
    assert moves.find(first.message_id, "SOMEONE-ELSE") is None
    assert moves.find(None, "DICOM-ROUTER") is None
    moves.close(first)
    assert moves.find(first.message_id, "DICOM-ROUTER") is None
