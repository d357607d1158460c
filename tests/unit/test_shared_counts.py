"""Counts shared by the acceptor processes (router/core/shared_counts.py): limits hold across
processes, a dead acceptor's counts can be dropped, and the table makes room for new keys."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from router.core.config.listen import default_acceptors
from router.core.shared_counts import SharedCounts


def test_limits_per_key_and_in_total_over_columns() -> None:
    counts = SharedCounts(16, 2)
    assert counts.try_add(0, b"10.0.0.1", 2, 3) is None
    assert counts.try_add(1, b"10.0.0.1", 2, 3) is None
    assert counts.try_add(0, b"10.0.0.1", 2, 3) == "key"  # 2 from it, in two columns
    assert counts.try_add(1, b"10.0.0.2", 2, 3) is None
    assert counts.try_add(0, b"10.0.0.3", 2, 3) == "total"
    assert counts.count() == 3 and counts.count(b"10.0.0.1") == 2
    counts.remove(1, b"10.0.0.1")
    assert counts.count(b"10.0.0.1") == 1 and counts.count() == 2
    assert counts.try_add(0, b"10.0.0.3", 2, 3) is None


def test_clearing_a_column_forgets_only_that_acceptor() -> None:
    counts = SharedCounts(16, 2)
    for _ in range(3):
        counts.try_add(0, b"CT1", None, None)
    counts.try_add(1, b"CT1", None, None)
    counts.clear_column(0)
    assert counts.count(b"CT1") == 1 and counts.count() == 1
    counts.remove(0, b"CT1")  # a late close from the dead one takes nothing away
    assert counts.count(b"CT1") == 1


def test_keys_whose_counts_fell_to_zero_make_room() -> None:
    counts = SharedCounts(8, 1)  # 8 slots: the total and 7 keys
    for round_ in range(5):
        keys = [f"{round_}-{i}".encode() for i in range(6)]
        for key in keys:
            assert counts.try_add(0, key, 1, None) is None
        for key in keys:
            counts.remove(0, key)
    assert counts.count() == 0


def test_a_full_table_refuses_instead_of_miscounting() -> None:
    counts = SharedCounts(8, 1)
    for i in range(7):
        assert counts.try_add(0, str(i).encode(), 1, None) is None
    assert counts.try_add(0, b"one too many", 1, None) == "full"
    assert counts.count() == 7


def _add(counts: SharedCounts, column: int, n: int) -> None:
    for _ in range(n):
        counts.try_add(column, b"MODALITY", None, None)


def test_processes_count_in_the_same_table(tmp_path: Path) -> None:
    """Spawned like the acceptors, each in its column, under the file lock."""
    counts = SharedCounts(64, 3, tmp_path / "counts.lock")
    spawn = multiprocessing.get_context("spawn")
    children = [spawn.Process(target=_add, args=(counts, c, 200)) for c in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert counts.count(b"MODALITY") == 600 and counts.count() == 600
    counts.clear_column(2)
    assert counts.count(b"MODALITY") == 400


def test_default_acceptors_follow_the_cores() -> None:
    assert [default_acceptors(c) for c in (1, 2, 3, 4, 8, 64)] == [1, 1, 1, 2, 4, 4]
