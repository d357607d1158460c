"""Dead letters as an operator sees them: list, show, replay and purge, with filters.

A dead letter is `<spool>/dead-letters/<job>.<destination>.json` (why it failed) beside
`<job>.dcm` (the instance, kept until no record refers to it). Replay stages a new job in
the spool's replay inbox, which the running broker (or the next start) queues.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.core.errors import RouterError
from router.core.letter_age import Age, Moment
from router.core.messages import JobHeader
from router.core.spool import Spool, new_job_id

log = logging.getLogger(__name__)

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_JOB_ID = re.compile(r"[0-9a-f]{8,64}")  # router.spool.new_job_id: hex digits
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """'90s', '10m', '2h', '7d' -> seconds."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise RouterError(f"{text!r} is not an age: use a number and s, m, h or d (e.g. 2h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class DeadLetter:
    record_path: Path
    job: JobHeader
    destination: str
    reason: str
    detail: str
    attempts: int
    failed_at: float  # wall-clock time
    written: Moment | None = None  # with the boot's clock when recorded (letter_age.py)

    def age(self, now: Moment) -> Age:
        return (self.written or Moment(self.failed_at, 0.0, None)).age_at(now)

    @property
    def id(self) -> str:
        return f"{self.job.job_id}.{self.destination}"

    @property
    def instance_path(self) -> Path:
        return self.record_path.with_name(f"{self.job.job_id}.dcm")

    def as_dict(self, now: Moment | None = None) -> dict[str, Any]:
        """`age_seconds` as `older_than` counts it (the boot's clock: a step of the system
        clock does not move it), beside the wall-clock `failed_at`; `clock_stepped_back`
        when an earlier boot's `failed_at` lies ahead of the clock now."""
        age = self.age(now or Moment.read())
        return {"id": self.id, "destination": self.destination, "reason": self.reason,
                "detail": self.detail, "attempts": self.attempts, "failed_at": self.failed_at,
                "age_seconds": round(age.seconds, 1), "clock_stepped_back": age.stepped_back,
                "instance": str(self.instance_path), "job": self.job.to_dict()}


@dataclass(frozen=True)
class Filter:
    destination: str | None = None
    reason: str | None = None
    older_than: float | None = None  # seconds
    newer_than: float | None = None

    def matches(self, letter: DeadLetter, now: Moment) -> bool:
        age = letter.age(now).seconds
        return ((self.destination is None or letter.destination == self.destination)
                and (self.reason is None or letter.reason == self.reason)
                and (self.older_than is None or age >= self.older_than)
                and (self.newer_than is None or age <= self.newer_than))


@dataclass(frozen=True)
class Damaged:
    """A record that cannot be read (truncated by a disk error, a hand edit): listed as
    such, purged by id, never shown or replayed (what it held is unknown)."""

    record_path: Path
    why: str

    @property
    def id(self) -> str:
        return self.record_path.name.removesuffix(".json")

    @property
    def instance_path(self) -> Path:
        return self.record_path.with_name(f"{self.id.split('.', 1)[0]}.dcm")

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "file": str(self.record_path), "why": self.why}


class DamagedLetter(RouterError):
    def __init__(self, damaged: Damaged) -> None:
        super().__init__(f"dead letter {damaged.id} cannot be read ({damaged.record_path}: "
                         f"{damaged.why}); purge it")
        self.damaged = damaged


_reported: set[Path] = set()  # damaged records this process logged: once each


def _load(path: Path) -> DeadLetter:
    try:
        body = json.loads(path.read_bytes())
        failed_at = float(body.get("failed_at", path.stat().st_mtime))
        return DeadLetter(path, JobHeader.from_dict(body["job"]), body["destination"],
                          body["reason"], body.get("detail", ""), int(body.get("attempts", 0)),
                          failed_at, Moment.of_record(body, failed_at))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        why = (f"not JSON: {exc}" if isinstance(exc, json.JSONDecodeError)
               else f"no {exc} in it" if isinstance(exc, KeyError)
               else f"{type(exc).__name__}: {exc}")
        damaged = Damaged(path, why[:300])
        if path not in _reported:
            _reported.add(path)
            log.warning("dead letter %s cannot be read (%s: %s): listed as unreadable; purge "
                        "it", damaged.id, path, damaged.why)
        raise DamagedLetter(damaged) from None


def _read(path: Path, damaged: list[Damaged] | None) -> DeadLetter | None:
    """The letter; None when it went (replayed or purged since the folder was listed) or
    cannot be read (then added to `damaged`): one bad record must not hide the others."""
    try:
        return _load(path)
    except FileNotFoundError:
        return None
    except DamagedLetter as exc:
        if damaged is not None:
            damaged.append(exc.damaged)
        return None


def find(spool: Spool, selection: Filter = Filter(),
         damaged: list[Damaged] | None = None, now: Moment | None = None) -> list[DeadLetter]:
    """Dead letters matching `selection`, oldest first; the records that cannot be read are
    left out (and added to `damaged`). Ages count to `now` (the clocks' reading)."""
    now = now or Moment.read()
    read = (_read(p, damaged) for p in sorted(spool.dead_letters.glob("*.json"))
            if not p.name.startswith("."))
    letters = [d for d in read if d is not None]
    return sorted((d for d in letters if selection.matches(d, now)), key=lambda d: d.failed_at)


@dataclass(frozen=True)
class Page:
    letters: list[DeadLetter]
    total: int  # every match, on every page
    next_after: str | None  # the last letter's id when more follow, else None
    unreadable: list[Damaged]  # records read for this page that cannot be read


def page(spool: Spool, selection: Filter, after: str | None, limit: int,
         keep: Callable[[DeadLetter], bool] | None = None, now: Moment | None = None) -> Page:
    """At most `limit` dead letters matching `selection` (and `keep`), by id: their jobs'
    arrival, as job ids are time-ordered. Only those after the id `after`, which need not
    exist any more (a purge between two pages shifts nothing). Only the page is kept: a
    list of 50,000 letters built whole was 41 MB of JSON; without a filter only the page is
    read too."""
    names = sorted(e.name[:-5] for e in os.scandir(spool.dead_letters)
                   if e.name.endswith(".json") and not e.name.startswith("."))
    damaged: list[Damaged] = []
    if selection == Filter() and keep is None:  # the count is the listing's
        start = bisect.bisect_right(names, after) if after is not None else 0
        read = (_read(spool.dead_letters / f"{n}.json", damaged)
                for n in names[start:start + limit])
        chosen = [d for d in read if d is not None]
        more = start + limit < len(names)
        total = len(names) - len(damaged)  # what else the page holds is not read
        return Page(chosen, total, names[start + limit - 1] if more else None, damaged)
    now, total, chosen, more = now or Moment.read(), 0, [], False
    for name in names:
        letter = _read(spool.dead_letters / f"{name}.json", damaged)
        if letter is None or not selection.matches(letter, now) or (keep and not keep(letter)):
            continue
        total += 1
        if after is not None and name <= after:
            continue
        if len(chosen) < limit:
            chosen.append(letter)
        else:
            more = True
    return Page(chosen, total, chosen[-1].id if more else None, damaged)


def get(spool: Spool, letter_id: str) -> DeadLetter:
    path = spool.dead_letters / f"{letter_id}.json"
    if "/" in letter_id or not path.is_file():
        raise RouterError(f"no dead letter {letter_id!r}; `dicom-router dead-letters list` "
                          "shows their ids")
    return _load(path)


def lookup(spool: Spool, text: str, damaged: list[Damaged] | None = None
           ) -> list[DeadLetter]:
    """Dead letters as an operator names them: an id from `list` (`<job>.<destination>`), a
    job id as the log prints it (every destination's dead letter of that job), or the record's
    file name or path as the log prints it (only inside the spool's dead-letters folder).
    A record that cannot be read raises DamagedLetter, or goes to `damaged` (a purge)."""
    name = text.strip()
    if "/" in name:
        path = Path(name).resolve()
        if path.parent != spool.dead_letters.resolve():
            raise RouterError(f"{text!r} is not in {spool.dead_letters}; "
                              "`dicom-router dead-letters list` shows the ids")
        name = path.name
    name = name.removesuffix(".json")
    if (spool.dead_letters / f"{name}.json").is_file() and not name.startswith("."):
        paths = [spool.dead_letters / f"{name}.json"]
    elif _JOB_ID.fullmatch(name):
        paths = sorted(spool.dead_letters.glob(f"{name}.*.json"))
    else:
        paths = []
    if paths:
        return [d for d in (_found(p, damaged) for p in paths) if d is not None]
    raise RouterError(f"no dead letter {text!r}; `dicom-router dead-letters list` shows their "
                      "ids")


def _found(path: Path, damaged: list[Damaged] | None) -> DeadLetter | None:
    try:
        return _load(path)
    except DamagedLetter as exc:
        if damaged is None:
            raise
        damaged.append(exc.damaged)
        return None


class Siblings:
    """Which records each job has, from one listing of the folder per bulk action: a glob of
    the whole folder per letter made replaying or purging 50,000 letters take hours.

    The broker writes a job's records (under the lock) only while its instance is in jobs/,
    so the listing stays exact for a job already finished then; a job still live then (or a
    letter written after it) is globbed again. Records named in the listing are probed under
    the lock, as another operator may have removed them meanwhile."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._records: dict[str, set[str]] | None = None
        self._live: set[str] = set()

    def _list(self) -> dict[str, set[str]]:  # under the lock
        if self._records is None:
            records: dict[str, set[str]] = {}
            with os.scandir(self.spool.dead_letters) as entries:
                for entry in entries:
                    if entry.name.endswith(".json") and not entry.name.startswith("."):
                        records.setdefault(entry.name.split(".", 1)[0], set()).add(entry.name)
            with os.scandir(self.spool.jobs) as entries:
                self._live = {e.name[:-4] for e in entries if e.name.endswith(".dcm")}
            self._records = records
        return self._records

    def others(self, letter: DeadLetter) -> bool:
        """Whether a record other than the letter's refers to its instance (under the lock)."""
        job_id, name = letter.job.job_id, letter.record_path.name
        listed = self._list().get(job_id, set())
        if job_id in self._live or name not in listed:
            return _others(letter)
        listed.discard(name)
        folder = letter.record_path.parent
        listed.intersection_update([n for n in listed if (folder / n).exists()])
        return bool(listed)


def _others(letter: DeadLetter) -> bool:
    return any(p.name != letter.record_path.name
               for p in letter.record_path.parent.glob(f"{letter.job.job_id}.*.json"))


def _forget(letter: DeadLetter, siblings: Siblings | None) -> None:
    """Remove the record, and the instance once no record refers to it (under the lock)."""
    others = _others(letter) if siblings is None else siblings.others(letter)
    letter.record_path.unlink(missing_ok=True)
    if not others:
        letter.instance_path.unlink(missing_ok=True)


def replay(spool: Spool, letter: DeadLetter, to: str | None = None,
           siblings: Siblings | None = None) -> JobHeader:
    """Send a dead letter again, to its destination or to `to`; the record is removed. A bulk
    replay passes one `Siblings` for all its letters."""
    target = to or letter.destination
    job = dataclasses.replace(letter.job, job_id=new_job_id(), destinations=(target,),
                              moved_from=letter.job.moved(letter.destination, target))
    with spool.dead_letter_lock():
        # Its record is the claim: an id given twice, or two operators at once, replay once
        # (the instance alone stays while the job has another dead letter).
        if not letter.record_path.exists():
            raise RouterError(f"dead letter {letter.id} was replayed or purged meanwhile")
        if not letter.instance_path.exists():
            raise RouterError(f"dead letter {letter.id} has lost its instance "
                              f"{letter.instance_path}; purge it")
        spool.stage_replay(job, letter.instance_path)
        _forget(letter, siblings)
    return job


def purge(spool: Spool, letter: DeadLetter, siblings: Siblings | None = None) -> None:
    with spool.dead_letter_lock():
        _forget(letter, siblings)


def purge_damaged(spool: Spool, damaged: Damaged) -> None:
    """Remove a record that cannot be read, and its instance once no record refers to it."""
    job_id = damaged.id.split(".", 1)[0]
    with spool.dead_letter_lock():
        others = any(p != damaged.record_path
                     for p in spool.dead_letters.glob(f"{job_id}.*.json"))
        damaged.record_path.unlink(missing_ok=True)
        if not others:
            damaged.instance_path.unlink(missing_ok=True)
