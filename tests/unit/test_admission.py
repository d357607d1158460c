"""router/acceptor/admission.py: disk watermark, congestion and draining (fake statvfs and
clock)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from router.acceptor import admission as admission_module
from router.acceptor.admission import (
    CONGESTION_SECONDS,
    DISK_CHECK_SECONDS,
    MAX_WATERMARK_MARGIN,
    AcceptorState,
    Admission,
)
from router.core.config import SpoolConfig

MIB = 1024**2
BLOCK = 4096
TOTAL_BLOCKS = 1_000_000  # ~3.8 GiB disk


class FakeStat(NamedTuple):
    f_bavail: int
    f_frsize: int
    f_blocks: int
    f_favail: int = 0
    f_files: int = 0  # no inode limit unless a test sets one


class FakeDisk:
    """os.statvfs stand-in: free bytes are settable; counts its calls."""

    def __init__(self, free_bytes: int) -> None:
        self.free_bytes = free_bytes
        self.calls: list[object] = []

    def __call__(self, path: object) -> FakeStat:
        self.calls.append(path)
        return FakeStat(self.free_bytes // BLOCK, BLOCK, TOTAL_BLOCKS)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    *,
    free: int,
    min_free_bytes: int = 100 * MIB,
    min_free_percent: float = 0.0,
) -> tuple[Admission, FakeDisk]:
    disk = FakeDisk(free)
    monkeypatch.setattr(admission_module.os, "statvfs", disk)
    config = SpoolConfig(path=tmp_path, min_free_bytes=min_free_bytes,
                         min_free_percent=min_free_percent)
    return Admission(config, clock=clock), disk


def test_statvfs_is_asked_about_the_spool_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, disk = make(tmp_path, monkeypatch, clock, free=500 * MIB)
    assert adm.refusal() is None
    assert disk.calls == [tmp_path]


def test_accepts_above_the_watermark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, _ = make(tmp_path, monkeypatch, clock, free=500 * MIB, min_free_percent=5.0)
    assert adm.refusal() is None


def test_refuses_below_min_free_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, _ = make(tmp_path, monkeypatch, clock, free=50 * MIB)
    refusal = adm.refusal()
    assert refusal is not None
    reason, message = refusal
    assert reason == "disk_watermark"
    assert "50 MiB" in message
    assert "100 MiB" in message


def test_refuses_below_min_free_percent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    # 500 MiB of a ~3.8 GiB disk is ~13%: plenty of bytes, too few percent.
    adm, _ = make(tmp_path, monkeypatch, clock, free=500 * MIB, min_free_bytes=0,
                  min_free_percent=20.0)
    refusal = adm.refusal()
    assert refusal is not None
    assert refusal[0] == "disk_watermark"
    assert "MiB" in refusal[1]
    assert "20.0%" in refusal[1]


def test_exactly_at_the_watermark_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, _ = make(tmp_path, monkeypatch, clock, free=100 * MIB)
    assert adm.refusal() is None


def test_disk_check_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, disk = make(tmp_path, monkeypatch, clock, free=500 * MIB)
    assert adm.refusal() is None
    disk.free_bytes = 10 * MIB  # the disk fills up...
    clock.now += DISK_CHECK_SECONDS / 2
    assert adm.refusal() is None  # ...but the cached answer still holds
    assert len(disk.calls) == 1
    clock.now += DISK_CHECK_SECONDS
    refusal = adm.refusal()
    assert refusal is not None and refusal[0] == "disk_watermark"
    assert len(disk.calls) == 2


def test_recovers_when_space_is_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, disk = make(tmp_path, monkeypatch, clock, free=10 * MIB)
    assert adm.refusal() is not None
    disk.free_bytes = 500 * MIB
    clock.now += DISK_CHECK_SECONDS
    assert adm.refusal() is None


def test_received_bytes_count_against_cached_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, disk = make(tmp_path, monkeypatch, clock, free=150 * MIB)
    assert adm.refusal() is None
    adm.note_received(40 * MIB)
    assert adm.refusal() is None  # 110 MiB left
    adm.note_received(20 * MIB)
    refusal = adm.refusal()  # 90 MiB left, without a new statvfs
    assert refusal is not None and refusal[0] == "disk_watermark"
    assert "90 MiB" in refusal[1]
    assert len(disk.calls) == 1


def test_fresh_check_forgets_received_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, _ = make(tmp_path, monkeypatch, clock, free=150 * MIB)
    assert adm.refusal() is None
    adm.note_received(100 * MIB)
    assert adm.refusal() is not None
    clock.now += DISK_CHECK_SECONDS  # statvfs now reports the disk as it is (still 150 MiB)
    assert adm.refusal() is None


def test_message_never_shows_negative_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, _ = make(tmp_path, monkeypatch, clock, free=10 * MIB, min_free_percent=1.0)
    assert adm.refusal() is not None  # the disk check; later bytes count against it
    adm.note_received(50 * MIB)
    refusal = adm.refusal()
    assert refusal is not None
    assert "(0 MiB, 0.0% free" in refusal[1]


def test_congestion_refuses_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, _ = make(tmp_path, monkeypatch, clock, free=500 * MIB)
    adm.mark_congested()
    refusal = adm.refusal()
    assert refusal is not None
    assert refusal[0] == "queue_full"
    clock.now += CONGESTION_SECONDS - 0.01
    assert adm.refusal() is not None
    clock.now += 0.02
    assert adm.refusal() is None


def test_draining_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, disk = make(tmp_path, monkeypatch, clock, free=10 * MIB)
    adm.mark_congested()
    adm.draining = True
    refusal = adm.refusal()
    assert refusal is not None
    assert refusal[0] == "draining"
    assert disk.calls == []  # no disk check needed to refuse while draining


def test_draining_lets_associations_in_progress_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, _ = make(tmp_path, monkeypatch, clock, free=1000 * MIB)
    adm.draining = True
    assert adm.refusal(new_association=False) is None
    assert adm.refusal() == ("draining", "router is shutting down")


def test_disk_watermark_comes_before_congestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, _ = make(tmp_path, monkeypatch, clock, free=10 * MIB)
    adm.mark_congested()
    refusal = adm.refusal()
    assert refusal is not None and refusal[0] == "disk_watermark"


def test_acceptor_state_maps_every_refusal_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, disk = make(tmp_path, monkeypatch, clock, free=10 * MIB)
    reasons = set()
    adm.draining = True
    reasons.add(adm.refusal()[0])  # type: ignore[index]
    adm.draining = False
    reasons.add(adm.refusal()[0])  # type: ignore[index]
    disk.free_bytes = 500 * MIB
    clock.now += DISK_CHECK_SECONDS
    adm.mark_congested()
    reasons.add(adm.refusal()[0])  # type: ignore[index]
    assert reasons == {"draining", "disk_watermark", "queue_full"}

    codes = {reason: AcceptorState.code(reason) for reason in reasons}
    assert codes == {
        "draining": AcceptorState.DRAINING,
        "disk_watermark": AcceptorState.DISK_WATERMARK,
        "queue_full": AcceptorState.QUEUE_FULL,
    }
    states = (AcceptorState.STARTING, AcceptorState.ACCEPTING, *codes.values(),
              AcceptorState.code("spool_unwritable"), AcceptorState.code("no_free_inodes"))
    assert len(set(states)) == 7
    assert set(AcceptorState.MESSAGES) == set(states)
    assert all(AcceptorState.MESSAGES[s] for s in states)


def test_acceptor_state_rejects_unknown_reason() -> None:
    with pytest.raises(KeyError):
        AcceptorState.code("bogus")


def test_few_free_inodes_empty_the_recycle_pool_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    # Bytes are plenty, inodes are not: the pooled files hold them, so the pool goes before
    # any work is refused (nothing settling may ever come to empty it).
    pool = tmp_path / "recycle"
    pool.mkdir()
    for i in range(5):
        (pool / f"r{i}.dcm").write_bytes(b"x")
    files = 100

    def statvfs(path: object) -> FakeStat:
        used = 88 + len(list(pool.iterdir()))  # 7 free with the pool, 12 without it
        return FakeStat(1000 * MIB // BLOCK, BLOCK, TOTAL_BLOCKS, files - used, files)

    monkeypatch.setattr(admission_module.os, "statvfs", statvfs)
    config = SpoolConfig(path=tmp_path, min_free_bytes=0, min_free_percent=5.0)
    admission = Admission(config, clock=clock)
    assert admission.refusal() is None  # at least 8 (5% of 100 is less): 12 is enough
    assert list(pool.iterdir()) == []


def test_refuses_below_the_inode_watermark_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    monkeypatch.setattr(admission_module.os, "statvfs",
                        lambda path: FakeStat(1000 * MIB // BLOCK, BLOCK, TOTAL_BLOCKS, 3, 60))
    admission = Admission(SpoolConfig(path=tmp_path, min_free_bytes=0, min_free_percent=0),
                          clock=clock)
    refusal = admission.refusal()
    assert refusal is not None
    assert "no free inodes" in refusal[1] and "3 of 60" in refusal[1], refusal
    # Before: labelled disk_watermark, and /readyz said "spool disk below its watermark"
    # with bytes plentiful.
    assert refusal[0] == "no_free_inodes"
    readiness = AcceptorState.MESSAGES[AcceptorState.code(refusal[0])]
    assert readiness == "refusing work: no free inodes on the spool disk (df -i)"


def test_a_refused_instance_must_fit_above_the_watermark_before_work_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    """Regression (CI): an instance received to 99.8 MiB free was refused; its file deleted,
    the disk read 100.3 MiB free, above the 100 MiB watermark, so /readyz said ready again
    and the next instance was refused after all its bytes had come. Now the refused
    instance's size is kept as a margin until the disk has room for it above the line."""
    adm, disk = make(tmp_path, monkeypatch, clock, free=100 * MIB - MIB // 5)
    refusal = adm.refusal(new_association=False, incoming=MIB // 2)
    assert refusal is not None and refusal[0] == "disk_watermark"
    disk.free_bytes += MIB // 2  # the refused instance's file is gone
    clock.now += DISK_CHECK_SECONDS
    refusal = adm.refusal()  # the acceptor's state, for /readyz
    assert refusal is not None and refusal[0] == "disk_watermark"
    assert "near its watermark" in refusal[1] and "+ 0.5 MiB" in refusal[1]
    disk.free_bytes = 100 * MIB + MIB // 2  # delivered instances freed room for it
    clock.now += DISK_CHECK_SECONDS
    assert adm.refusal() is None
    disk.free_bytes = 100 * MIB  # the margin is spent: the watermark alone counts again
    clock.now += DISK_CHECK_SECONDS
    assert adm.refusal() is None


def test_the_margin_after_a_refused_large_instance_is_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    """A refused 3 GB slide does not hold back small instances once 64 MiB are free above
    the watermark."""
    adm, disk = make(tmp_path, monkeypatch, clock, free=90 * MIB)
    assert adm.refusal(new_association=False, incoming=3 * 1024 * MIB) is not None
    disk.free_bytes = 100 * MIB + MAX_WATERMARK_MARGIN
    clock.now += DISK_CHECK_SECONDS
    assert adm.refusal() is None


def test_an_instance_that_fits_leaves_no_margin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    adm, _ = make(tmp_path, monkeypatch, clock, free=101 * MIB)
    assert adm.refusal(new_association=False, incoming=MIB // 2) is None
    assert adm.refusal() is None
