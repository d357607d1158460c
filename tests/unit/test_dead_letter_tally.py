"""The dead letters waiting per destination (router/broker/dead_letter_tally.py): the folder
is scanned every few seconds, but what the broker itself writes, or an operator removes
through it, shows at the next heartbeat."""

from __future__ import annotations

from pathlib import Path

from router.broker.dead_letter_tally import REFRESH_SECONDS, DeadLetterTally


def _letter(folder: Path, job: str, destination: str) -> None:
    (folder / f"{job}.{destination}.json").write_text("{}")


def test_the_folder_is_counted_per_destination_once_per_refresh(tmp_path: Path) -> None:
    _letter(tmp_path, "a", "pacs")
    _letter(tmp_path, "b", "pacs")
    _letter(tmp_path, "c", "archive")
    (tmp_path / ".d.pacs.json").write_text("{}")  # a record being written: not yet one
    tally = DeadLetterTally(tmp_path)
    assert tally.counts(100.0) == {"pacs": 2, "archive": 1}
    _letter(tmp_path, "e", "pacs")  # written by another process: seen at the next scan
    assert tally.counts(100.0 + REFRESH_SECONDS / 2) == {"pacs": 2, "archive": 1}
    assert tally.counts(100.0 + REFRESH_SECONDS) == {"pacs": 3, "archive": 1}


def test_a_letter_the_broker_writes_counts_at_once(tmp_path: Path) -> None:
    tally = DeadLetterTally(tmp_path)
    assert tally.counts(100.0) == {}
    _letter(tmp_path, "a", "pacs")
    tally.added("pacs")
    assert tally.counts(100.1) == {"pacs": 1}


def test_an_operators_purge_through_the_broker_counts_again_at_once(tmp_path: Path) -> None:
    _letter(tmp_path, "a", "pacs")
    tally = DeadLetterTally(tmp_path)
    assert tally.counts(100.0) == {"pacs": 1}
    (tmp_path / "a.pacs.json").unlink()
    tally.stale()
    assert tally.counts(100.1) == {}
