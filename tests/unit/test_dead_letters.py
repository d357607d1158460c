"""router/service/dead_letters.py: ages, filters, get, replay and purge over a tmp_path spool."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from router.cli.main import main
from router.core import spool as spool_module
from router.core.errors import RouterError
from router.core.messages import JobHeader
from router.core.spool import Spool
from router.service.dead_letters import (
    DeadLetter,
    Filter,
    Siblings,
    find,
    get,
    parse_age,
    purge,
    replay,
)

from .helpers import make_header

HOUR = 3600.0
JOB_A = "0000000000000001aaaaaaaa"
JOB_B = "0000000000000002bbbbbbbb"
JOB_C = "0000000000000003cccccccc"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").create()


def dead_letter(
    spool: Spool,
    job_id: str,
    destination: str,
    *,
    age: float,
    reason: str = "rejected",
    destinations: tuple[str, ...] | None = None,
    data: bytes | None = None,
) -> JobHeader:
    """Put an instance on the spool (if not there yet) and dead-letter it for `destination`."""
    header = make_header(job_id, destinations or (destination,), sop_instance_uid=f"1.2.{age:.0f}")
    instance = spool.instance_path(job_id)
    if not instance.exists():
        instance.write_bytes(data or f"instance {job_id}".encode())
    spool.dead_letter(header, destination, {
        "reason": reason, "detail": f"{destination} said no", "attempts": 3,
        "failed_at": time.time() - age,
    })
    return header


# --- parse_age ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("7d", 604800.0), ("1.5h", 5400.0),
    ("0s", 0.0), (" 3m ", 180.0),
])
def test_parse_age(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "h", "2w", "-1h", "2 h", "2hh", "1e3s", "1.5.2h",
                                  "abc"])
def test_parse_age_rejects_garbage(text: str) -> None:
    with pytest.raises(RouterError, match="not an age"):
        parse_age(text)


# --- find / get --------------------------------------------------------------------------------


def test_find_lists_all_oldest_first(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=1 * HOUR)
    dead_letter(spool, JOB_B, "pacs", age=5 * HOUR)
    dead_letter(spool, JOB_C, "archive", age=3 * HOUR)
    letters = find(spool)
    assert [letter.id for letter in letters] == [
        f"{JOB_B}.pacs", f"{JOB_C}.archive", f"{JOB_A}.pacs",
    ]
    first = letters[0]
    assert first.destination == "pacs"
    assert first.reason == "rejected"
    assert first.detail == "pacs said no"
    assert first.attempts == 3
    assert first.job.job_id == JOB_B
    assert first.instance_path == spool.dead_letters / f"{JOB_B}.dcm"
    assert first.as_dict()["id"] == f"{JOB_B}.pacs"


def test_find_on_an_empty_spool(spool: Spool) -> None:
    assert find(spool) == []


def test_find_ignores_temp_files(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60)
    (spool.dead_letters / f".{JOB_B}.pacs.json").write_text("{half a record")
    assert [letter.id for letter in find(spool)] == [f"{JOB_A}.pacs"]


def test_filters_select_the_right_letters(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=10 * 60, reason="rejected")
    dead_letter(spool, JOB_B, "pacs", age=3 * HOUR, reason="dimse_timeout")
    dead_letter(spool, JOB_C, "archive", age=2 * 86400, reason="rejected")

    def ids(selection: Filter) -> list[str]:
        return [letter.id for letter in find(spool, selection)]

    assert ids(Filter(destination="pacs")) == [f"{JOB_B}.pacs", f"{JOB_A}.pacs"]
    assert ids(Filter(destination="nowhere")) == []
    assert ids(Filter(reason="rejected")) == [f"{JOB_C}.archive", f"{JOB_A}.pacs"]
    assert ids(Filter(older_than=parse_age("1h"))) == [f"{JOB_C}.archive", f"{JOB_B}.pacs"]
    assert ids(Filter(newer_than=parse_age("1h"))) == [f"{JOB_A}.pacs"]
    assert ids(Filter(older_than=HOUR, newer_than=86400)) == [f"{JOB_B}.pacs"]
    assert ids(Filter(destination="pacs", reason="rejected")) == [f"{JOB_A}.pacs"]


def test_get_returns_the_letter(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60)
    letter = get(spool, f"{JOB_A}.pacs")
    assert isinstance(letter, DeadLetter)
    assert letter.job.job_id == JOB_A
    assert letter.destination == "pacs"


@pytest.mark.parametrize("letter_id", [
    f"{JOB_B}.pacs", f"{JOB_A}.archive", JOB_A, "", "..",
    f"../dead-letters/{JOB_A}.pacs", f"x/../{JOB_A}.pacs", f"/{JOB_A}.pacs",
])
def test_get_rejects_unknown_or_path_ids(spool: Spool, letter_id: str) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60)
    with pytest.raises(RouterError, match="no dead letter"):
        get(spool, letter_id)


def test_get_rejects_a_path_to_a_record_outside_dead_letters(spool: Spool) -> None:
    # A real .json elsewhere in the spool must not be reachable through an id with '/'.
    header = make_header(JOB_A, ("pacs",))
    (spool.root / "evil.json").write_text(json.dumps(
        {"job": header.to_dict(), "destination": "pacs", "reason": "x"}))
    with pytest.raises(RouterError):
        get(spool, "../evil")


# --- replay / purge ----------------------------------------------------------------------------


def test_replay_stages_a_new_job_and_removes_the_record(spool: Spool) -> None:
    original = dead_letter(spool, JOB_A, "pacs", age=60)
    letter = get(spool, f"{JOB_A}.pacs")
    inode = letter.instance_path.stat().st_ino

    job = replay(spool, letter)

    assert job.job_id != JOB_A
    assert job.destinations == ("pacs",)
    assert job.sop_instance_uid == original.sop_instance_uid
    staged_header = spool.replay / f"{job.job_id}.json"
    staged_instance = spool.replay / f"{job.job_id}.dcm"
    assert JobHeader.from_dict(json.loads(staged_header.read_bytes())) == job
    assert staged_instance.stat().st_ino == inode  # a hard link, not a copy
    assert staged_instance.read_bytes() == f"instance {JOB_A}".encode()
    assert not letter.record_path.exists()
    assert not letter.instance_path.exists()  # no other record of the job
    assert find(spool) == []


def test_replay_to_another_destination(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60)
    job = replay(spool, get(spool, f"{JOB_A}.pacs"), to="archive")
    assert job.destinations == ("archive",)
    staged = JobHeader.from_dict(json.loads((spool.replay / f"{job.job_id}.json").read_bytes()))
    assert staged.destinations == ("archive",)


def test_replays_get_distinct_job_ids(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60, destinations=("pacs", "archive"))
    dead_letter(spool, JOB_A, "archive", age=30, destinations=("pacs", "archive"))
    first = replay(spool, get(spool, f"{JOB_A}.pacs"))
    second = replay(spool, get(spool, f"{JOB_A}.archive"))
    assert first.job_id != second.job_id
    assert len(list(spool.replay.glob("*.dcm"))) == 2


def test_instance_stays_while_another_record_of_the_job_remains(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60, destinations=("pacs", "archive"))
    dead_letter(spool, JOB_A, "archive", age=30, destinations=("pacs", "archive"))
    instance = spool.dead_letters / f"{JOB_A}.dcm"
    # An unrelated job's letter must not keep JOB_A's instance alive (or vice versa).
    dead_letter(spool, JOB_B, "pacs", age=10)

    replay(spool, get(spool, f"{JOB_A}.pacs"))
    assert instance.exists()
    assert [letter.id for letter in find(spool)] == [f"{JOB_A}.archive", f"{JOB_B}.pacs"]

    purge(spool, get(spool, f"{JOB_A}.archive"))
    assert not instance.exists()
    assert (spool.dead_letters / f"{JOB_B}.dcm").exists()
    assert [letter.id for letter in find(spool)] == [f"{JOB_B}.pacs"]


def test_a_dead_letter_is_replayed_once_however_often_it_is_named(spool: Spool) -> None:
    """While the job's other dead letter kept the instance, a second replay of the same
    letter (an id given twice, two operators at once) staged a second job: the destination
    got the instance twice."""
    dead_letter(spool, JOB_A, "pacs", age=60, destinations=("pacs", "archive"))
    dead_letter(spool, JOB_A, "archive", age=30, destinations=("pacs", "archive"))
    letter = get(spool, f"{JOB_A}.pacs")
    replay(spool, letter, to="archive")
    with pytest.raises(RouterError, match="replayed or purged meanwhile"):
        replay(spool, letter, to="archive")
    assert len(list(spool.replay.glob("*.dcm"))) == 1
    purge(spool, get(spool, f"{JOB_A}.archive"))
    with pytest.raises(RouterError, match="replayed or purged meanwhile"):
        replay(spool, letter)



def _cli_config(tmp_path: Path, spool: Spool) -> Path:
    config = tmp_path / "router.yaml"
    config.write_text(f"spool: {{path: {spool.root}}}\n"
                      "destinations: {pacs: {type: folder, path: out}}\n"
                      "rules: [{name: all, forward: [pacs]}]\n")
    return config


@pytest.mark.parametrize("action", ["replay", "purge"])
def test_the_cli_replays_or_purges_an_id_named_twice_once_and_goes_on(
        spool: Spool, tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str) -> None:
    """`replay A A B` stopped at the second A ("replayed or purged meanwhile", exit 2) and
    never replayed B; the same letter named as itself and within its job id did too."""
    dead_letter(spool, JOB_A, "pacs", age=60)
    dead_letter(spool, JOB_B, "pacs", age=30)
    ids = [f"{JOB_A}.pacs", f"{JOB_A}.pacs", JOB_A, f"{JOB_B}.pacs"]

    code = main(["dead-letters", action, "--config", str(_cli_config(tmp_path, spool)), *ids])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    done = {"replay": "replayed", "purge": "purged"}[action]
    assert f"{JOB_A}.pacs was named more than once: {done} once" in out
    assert f"2 dead letters {done}" in out
    assert find(spool) == []
    assert len(list(spool.replay.glob("*.dcm"))) == (2 if action == "replay" else 0)

def test_purge_removes_record_and_instance(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60)
    purge(spool, get(spool, f"{JOB_A}.pacs"))
    assert list(spool.dead_letters.iterdir()) == []


def test_replayed_instance_survives_purge_of_the_rest(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60, destinations=("pacs", "archive"))
    dead_letter(spool, JOB_A, "archive", age=30, destinations=("pacs", "archive"))
    job = replay(spool, get(spool, f"{JOB_A}.pacs"))
    purge(spool, get(spool, f"{JOB_A}.archive"))
    assert (spool.replay / f"{job.job_id}.dcm").read_bytes() == f"instance {JOB_A}".encode()


def test_dead_lettering_during_a_purge_keeps_the_instance(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator purges a job's other letter while the broker dead-letters this one: the
    purge waits for the broker's lock, sees the new record and keeps the instance."""
    both = ("pacs", "archive")
    header = dead_letter(spool, JOB_A, "pacs", age=60, destinations=both)
    letter = get(spool, f"{JOB_A}.pacs")
    real_write = spool_module.write_atomically
    operator = threading.Thread(target=purge, args=(spool, letter))

    def purge_meanwhile(path: Path, data: bytes, *, fsync: bool = True) -> None:
        if path.parent == spool.dead_letters and not operator.is_alive():
            operator.start()  # between the broker's exists() check and its record
            operator.join(0.2)  # it must be waiting for the lock, not done
            assert operator.is_alive()
        real_write(path, data, fsync=fsync)

    monkeypatch.setattr(spool_module, "write_atomically", purge_meanwhile)
    spool.dead_letter(header, "archive", {"reason": "rejected", "failed_at": time.time()})
    operator.join(5)

    assert not operator.is_alive()
    assert not letter.record_path.exists()  # the purge did happen, after the broker
    remaining = get(spool, f"{JOB_A}.archive")
    assert remaining.instance_path.exists(), "the record outlived its instance"
    assert remaining.instance_path.read_bytes() == f"instance {JOB_A}".encode()


def _finished(spool: Spool, job_id: str, *destinations: str) -> None:
    """Dead-letter a job for each destination, then end it as the broker does (jobs/ empty)."""
    for name in destinations:
        dead_letter(spool, job_id, name, age=60, destinations=destinations)
    spool.instance_path(job_id).unlink()


def _count_listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every directory listing (glob, iterdir, scandir, listdir) made from now on."""
    seen: list[str] = []
    for owner, name in ((Path, "glob"), (Path, "iterdir"), (os, "scandir"), (os, "listdir")):
        real = getattr(owner, name)

        def counting(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            seen.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)
    return seen


@pytest.mark.parametrize("action", ["purge", "replay"])
def test_a_bulk_action_lists_the_folder_once_however_many_letters(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """Purging or replaying k letters among n costs O(k), not k listings of n (a glob per
    letter took hours for 50,000 letters)."""
    jobs = [f"{i:016x}aaaaaaaa" for i in range(1, 121)]
    for job_id in jobs:
        _finished(spool, job_id, "pacs", "archive")
    letters = [get(spool, f"{job_id}.pacs") for job_id in jobs[:40]]
    letters += [get(spool, f"{job_id}.archive") for job_id in jobs[:20]]
    siblings = Siblings(spool)
    listings = _count_listings(monkeypatch)

    for letter in letters:
        if action == "purge":
            purge(spool, letter, siblings)
        else:
            replay(spool, letter, None, siblings)

    assert len(listings) == 2  # dead-letters/ and jobs/, once each
    monkeypatch.undo()
    kept = {p.name for p in spool.dead_letters.glob("*.dcm")}
    assert kept == {f"{job_id}.dcm" for job_id in jobs[20:]}  # only those with a record left
    assert len(find(spool)) == 2 * 120 - 60


def test_a_bulk_purge_sees_a_record_written_after_its_listing(spool: Spool) -> None:
    """A job still live when the folder was listed may get another record meanwhile: its
    instance stays for it."""
    live = ("pacs", "archive")
    header = dead_letter(spool, JOB_A, "pacs", age=60, destinations=live)
    _finished(spool, JOB_B, "pacs")
    siblings = Siblings(spool)
    purge(spool, get(spool, f"{JOB_B}.pacs"), siblings)  # lists the folder
    spool.dead_letter(header, "archive", {"reason": "rejected", "failed_at": time.time()})
    spool.instance_path(JOB_A).unlink()  # the broker ends the job

    purge(spool, get(spool, f"{JOB_A}.pacs"), siblings)

    assert get(spool, f"{JOB_A}.archive").instance_path.read_bytes() == (
        f"instance {JOB_A}".encode())
    assert not (spool.dead_letters / f"{JOB_B}.dcm").exists()


def test_a_bulk_purge_sees_a_sibling_another_operator_purged(spool: Spool) -> None:
    """Its listing still names the other record: probed, it is gone, so is the instance."""
    _finished(spool, JOB_A, "pacs", "archive")
    _finished(spool, JOB_B, "pacs")
    siblings = Siblings(spool)
    purge(spool, get(spool, f"{JOB_B}.pacs"), siblings)  # lists the folder
    purge(spool, get(spool, f"{JOB_A}.archive"))  # someone else, without our listing

    purge(spool, get(spool, f"{JOB_A}.pacs"), siblings)

    assert list(spool.dead_letters.iterdir()) == []


# --- Spool.take_replays ------------------------------------------------------------------------


def test_take_replays_moves_staged_jobs_into_jobs(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60)
    dead_letter(spool, JOB_B, "archive", age=30)
    first = replay(spool, get(spool, f"{JOB_A}.pacs"))
    second = replay(spool, get(spool, f"{JOB_B}.archive"))

    taken = spool.take_replays()

    assert sorted(taken, key=lambda h: h.job_id) == sorted([first, second],
                                                           key=lambda h: h.job_id)
    assert list(spool.replay.iterdir()) == []
    for job in (first, second):
        assert spool.instance_path(job.job_id).is_file()
        assert (spool.jobs / f"{job.job_id}.json").is_file()
    recovered = {r.header.job_id: r for r in spool.recover()}
    assert set(recovered) >= {first.job_id, second.job_id}
    assert recovered[first.job_id].header == first
    assert spool.take_replays() == []


def test_take_replays_skips_an_instance_without_header(spool: Spool) -> None:
    dead_letter(spool, JOB_A, "pacs", age=60)
    good = replay(spool, get(spool, f"{JOB_A}.pacs"))
    orphan = spool.replay / f"{JOB_C}.dcm"
    orphan.write_bytes(b"instance without a header")

    taken = spool.take_replays()

    assert [h.job_id for h in taken] == [good.job_id]
    assert orphan.read_bytes() == b"instance without a header"  # left for an operator
    assert not spool.instance_path(JOB_C).exists()
    assert spool.instance_path(good.job_id).is_file()


def test_take_replays_skips_an_unreadable_header(spool: Spool) -> None:
    (spool.replay / f"{JOB_C}.json").write_text("{not json")
    (spool.replay / f"{JOB_C}.dcm").write_bytes(b"x")
    assert spool.take_replays() == []
    assert {p.name for p in spool.replay.iterdir()} == {f"{JOB_C}.json", f"{JOB_C}.dcm"}
