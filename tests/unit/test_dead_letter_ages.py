"""A dead letter's age across a step of the system clock (router/core/letter_age.py): within
one boot it counts on CLOCK_BOOTTIME; from another boot, or from a record without the boot's
clock, on the wall clock, never below zero. The clocks are passed in, never read."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli.dead_letters import _age
from router.core.letter_age import Age, Moment
from router.core.spool import Spool
from router.service.console.views_letters import _age as console_age
from router.service.dead_letters import Filter, find, page

from .helpers import make_header

BOOT = "a1b2c3d4"
WRITTEN = Moment(wall=1_000_000.0, boot=5_000.0, boot_id=BOOT)
TEN_MINUTES, HOUR = 600.0, 3600.0


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").create()


def write(spool: Spool, written: Moment, *, old_record: bool = False) -> None:
    """A dead letter recorded at `written`; `old_record`: failed_at only, as before."""
    job_id = "0000000000000001aaaaaaaa"
    spool.instance_path(job_id).write_bytes(b"instance")
    when = {"failed_at": written.wall} if old_record else written.stamp()
    spool.dead_letter(make_header(job_id, ("pacs",)), "pacs",
                      {"reason": "rejected", "attempts": 3, **when})


def ages(spool: Spool, now: Moment) -> list[Age]:
    return [letter.age(now) for letter in find(spool, now=now)]


def matching(spool: Spool, now: Moment, selection: Filter) -> int:
    return len(find(spool, selection, now=now))


def test_after_a_step_back_the_age_counts_on_the_boot_clock(spool: Spool) -> None:
    """Written, then 60 s later the clock stepped back 2 h: one minute old (before: -7140s,
    and --newer-than 10m matched it by the wall clock while --older-than did not)."""
    write(spool, WRITTEN)
    now = Moment(wall=WRITTEN.wall - 2 * HOUR + 60, boot=WRITTEN.boot + 60, boot_id=BOOT)

    assert ages(spool, now) == [Age(60.0)]
    assert matching(spool, now, Filter(newer_than=TEN_MINUTES)) == 1
    assert matching(spool, now, Filter(older_than=TEN_MINUTES)) == 0


def test_after_a_step_forward_older_than_does_not_match_too_early(spool: Spool) -> None:
    write(spool, WRITTEN)
    now = Moment(wall=WRITTEN.wall + 2 * HOUR + 60, boot=WRITTEN.boot + 60, boot_id=BOOT)

    assert matching(spool, now, Filter(older_than=HOUR)) == 0
    assert matching(spool, now, Filter(newer_than=TEN_MINUTES)) == 1
    assert page(spool, Filter(older_than=HOUR), None, 10, now=now).total == 0


def test_a_suspend_counts_as_time(spool: Spool) -> None:
    """CLOCK_BOOTTIME goes on through a suspend: a night's sleep makes the letter older."""
    write(spool, WRITTEN)
    now = Moment(wall=WRITTEN.wall + 8 * HOUR, boot=WRITTEN.boot + 8 * HOUR, boot_id=BOOT)

    assert ages(spool, now) == [Age(8 * HOUR)]


def test_a_letter_of_an_earlier_boot_counts_on_the_wall_clock(spool: Spool) -> None:
    write(spool, WRITTEN)
    now = Moment(wall=WRITTEN.wall + 3 * HOUR, boot=30.0, boot_id="ffff0000")

    assert ages(spool, now) == [Age(3 * HOUR)]


@pytest.mark.parametrize("old_record", [True, False], ids=["no-boot-fields", "other-boot"])
def test_a_wall_clock_age_is_never_negative(spool: Spool, old_record: bool) -> None:
    """Its wall-clock time lies ahead: age 0, said to be from before the step back."""
    write(spool, WRITTEN, old_record=old_record)
    now = Moment(wall=WRITTEN.wall - 2 * HOUR, boot=30.0, boot_id="ffff0000")

    assert ages(spool, now) == [Age(0.0, stepped_back=True)]
    assert matching(spool, now, Filter(newer_than=TEN_MINUTES)) == 1


def test_a_record_without_the_boot_fields_keeps_its_wall_clock_age(spool: Spool) -> None:
    write(spool, WRITTEN, old_record=True)
    now = Moment(wall=WRITTEN.wall + 2 * HOUR, boot=WRITTEN.boot + 60, boot_id=BOOT)

    assert ages(spool, now) == [Age(2 * HOUR)]


def test_the_list_and_the_console_mark_an_age_from_before_a_step_back() -> None:
    assert _age(Age(0.0, stepped_back=True)) == "0s*"
    assert _age(Age(2 * HOUR)) == "2h"
    assert console_age(Age(0.0, stepped_back=True)) == \
        "0s (written before the clock stepped back)"
    assert console_age(Age(2 * HOUR)) == "2h"


def test_a_record_written_now_carries_the_boot_clock(spool: Spool) -> None:
    now = Moment.read()
    if now.boot_id is None:
        pytest.skip("no /proc/sys/kernel/random/boot_id here")
    write(spool, now)

    (letter,) = find(spool, now=now)
    assert letter.written == now
    assert letter.age(now) == Age(0.0)


def test_the_json_of_a_letter_carries_its_age_on_the_boot_clock(spool: Spool) -> None:
    """The API's and `dead-letters list --json`'s records gave the wall-clock `failed_at`
    only: a script computing the age from it was off by any step of the clock since, where
    `older_than` (the same letters' filter) was not."""
    write(spool, WRITTEN)
    now = Moment(wall=WRITTEN.wall - 2 * HOUR + 60, boot=WRITTEN.boot + 60, boot_id=BOOT)
    (letter,) = find(spool, now=now)
    shown = letter.as_dict(now)
    assert shown["failed_at"] == WRITTEN.wall
    assert shown["age_seconds"] == 60.0 and shown["clock_stepped_back"] is False
    earlier_boot = Moment(wall=WRITTEN.wall - 30, boot=10.0, boot_id="ffffffff")
    assert letter.as_dict(earlier_boot)["age_seconds"] == 0.0
    assert letter.as_dict(earlier_boot)["clock_stepped_back"] is True
