"""workers/delivery.py: DeliveryThread.handle() to a folder destination, without the thread.

The thread is never started: handle() is called directly, the ledger is opened by hand (run()
does it in the thread), and the results socket is an inproc PUSH that nothing is sent on.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import queue
import shutil
import sqlite3
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import zmq

from router.core.config import RouterConfig, parse_config
from router.core.messages import Deliver, JobHeader, Result
from router.core.spool import Spool
from tests.dicom_samples import write_instance
from workers import delivery as delivery_module
from workers.delivery import DeliveryThread
from workers.ledger import DeliveryLedger, file_digest
from workers.prepare import Preparer, open_uid_map

from .helpers import CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN, make_header

ENDPOINT = "inproc://results-test"
STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.10.1"
SOP = "1.2.826.0.1.3680043.8.498.10.1.1"
JOB_1 = "0000000000000001aaaaaaaa"
JOB_2 = "0000000000000002bbbbbbbb"
JOB_3 = "0000000000000003cccccccc"

# The hostile samples make pydicom warn when the router reads them back: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")


@dataclass
class Rig:
    tmp: Path
    config: RouterConfig
    spool: Spool
    thread: DeliveryThread
    archive: Path
    backup: Path

    def sample(self, name: str, tags: dict[str, object] | None = None) -> Path:
        """A real Part 10 CT instance with the UIDs STUDY/SERIES/SOP, in its own folder."""
        return write_instance(self.tmp / "samples" / name, sop_class=CT_IMAGE_STORAGE,
                              transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN, study_uid=STUDY,
                              series_uid=SERIES, sop_instance_uid=SOP, tags=tags)

    def spool_job(self, job_id: str, source: Path, destinations: tuple[str, ...] = ("archive",),
                  sop_instance_uid: str = SOP) -> JobHeader:
        shutil.copyfile(source, self.spool.instance_path(job_id))
        return make_header(job_id, destinations, size=source.stat().st_size,
                           sop_instance_uid=sop_instance_uid)

    def deliver(self, job: JobHeader, destination: str = "archive", attempt: int = 1) -> Result:
        return self.thread.handle(Deliver(job, destination, attempt))

    def skip_duplicates(self, name: str = "archive") -> None:
        """on_duplicate: skip for this destination (the default sends a re-send again)."""
        dest = self.config.destinations[name].model_copy(update={"on_duplicate": "skip"})
        self.thread.config = self.config.model_copy(
            update={"destinations": {**self.config.destinations, name: dest}})

    def stored(self, study: str = STUDY, series: str = SERIES, sop: str = SOP) -> Path:
        return self.archive / study / series / f"{sop}.dcm"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    archive, backup = tmp_path / "archive", tmp_path / "backup"
    config = parse_config({
        "spool": {"path": str(tmp_path / "spool")},
        "destinations": {
            "archive": {"type": "folder", "path": str(archive)},
            "backup": {"type": "folder", "path": str(backup)},
        },
        "rules": [{"name": "all", "forward": ["archive", "backup"]}],
    })
    spool = Spool(config.spool.path).create()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(ENDPOINT)
    tasks: queue.Queue[Deliver | None] = queue.Queue()
    thread = DeliveryThread(config, spool, tasks, context, ENDPOINT, 0)
    thread.ledger = DeliveryLedger(spool.ledger_path, 3600)
    try:
        yield Rig(tmp_path, config, spool, thread, archive, backup)
    finally:
        if thread.ledger is not None:
            thread.ledger.close()
        for destination in thread.destinations.values():
            destination.close()
        thread.results.setsockopt(zmq.LINGER, 0)
        thread.results.close()
        pull.close()
        context.term()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_first_delivery_writes_the_archive_file(rig: Rig) -> None:
    source = rig.sample("a")
    job = rig.spool_job(JOB_1, source)
    result = rig.deliver(job)
    assert result == Result(JOB_1, "archive", True, "")
    assert rig.stored().read_bytes() == source.read_bytes()
    assert files_under(rig.archive) == {rig.stored()}  # no temp file left behind
    # A single-destination job needs no per-destination marker.
    assert not list(rig.spool.jobs.glob("*.done"))


def test_same_job_again_is_a_suppressed_redelivery(rig: Rig) -> None:
    job = rig.spool_job(JOB_1, rig.sample("a"))
    assert rig.deliver(job).delivered
    rig.stored().write_bytes(b"marker: the archive copy must not be rewritten")

    result = rig.deliver(job, attempt=2)

    assert result == Result(JOB_1, "archive", True, "redelivery")
    assert rig.stored().read_bytes() == b"marker: the archive copy must not be rewritten"


def test_same_bytes_under_a_new_job_id_are_sent_again(rig: Rig) -> None:
    """A re-send from the modality is new work: the destination may have lost the first."""
    source = rig.sample("a")
    assert rig.deliver(rig.spool_job(JOB_1, source)).delivered
    rig.stored().unlink()  # the PACS lost it
    result = rig.deliver(rig.spool_job(JOB_2, source))
    assert result == Result(JOB_2, "archive", True, "")
    assert rig.stored().read_bytes() == source.read_bytes()


def test_on_duplicate_skip_suppresses_the_same_bytes_from_a_new_job(rig: Rig) -> None:
    rig.skip_duplicates()
    source = rig.sample("a")
    assert rig.deliver(rig.spool_job(JOB_1, source)).delivered
    rig.stored().write_bytes(b"marker")
    result = rig.deliver(rig.spool_job(JOB_2, source))
    assert (result.delivered, result.reason) == (True, "duplicate")
    assert rig.stored().read_bytes() == b"marker"
    changed = rig.sample("b", tags={"StudyDescription": "X"})  # other bytes: sent
    assert rig.deliver(rig.spool_job(JOB_3, changed)) == Result(JOB_3, "archive", True, "")


def test_on_duplicate_skip_compares_what_the_destination_gets_not_the_received_file(
        rig: Rig) -> None:
    """The same file from a sender whose rule morphs, then from one whose rule does not:
    the destination got other bytes the first time, so the second is sent, not skipped."""
    morphing = parse_config({
        "spool": {"path": str(rig.spool.root)},
        "destinations": {"archive": {"type": "folder", "path": str(rig.archive),
                                     "on_duplicate": "skip"}},
        "rules": [{"name": "ct", "match": {"calling_ae": "CT1"}, "forward": ["archive"],
                   "morph": [{"action": "set", "tag": "InstitutionName", "value": "X"}]},
                  {"name": "other", "forward": ["archive"]}]})
    rig.thread.config = morphing
    rig.thread.preparer = Preparer(morphing, rig.spool, lambda: None)
    source = rig.sample("a")
    morphed = dataclasses.replace(rig.spool_job(JOB_1, source), rules=("ct",))
    assert rig.deliver(morphed) == Result(JOB_1, "archive", True, "", wrote_copy=True)
    assert rig.stored().read_bytes() != source.read_bytes()
    plain = dataclasses.replace(rig.spool_job(JOB_2, source), rules=("other",))
    assert rig.deliver(plain) == Result(JOB_2, "archive", True, "")
    assert rig.stored().read_bytes() == source.read_bytes()
    again = dataclasses.replace(rig.spool_job(JOB_3, source), rules=("other",))
    assert rig.deliver(again) == Result(JOB_3, "archive", True, "duplicate")


def test_an_older_version_sent_again_replaces_the_newer_one(rig: Rig) -> None:
    """Explicit, then Implicit, then Explicit again: the destination ends with the third."""
    first = rig.sample("a")
    second = rig.sample("b", tags={"StudyDescription": "X"})
    for job_id, source in [(JOB_1, first), (JOB_2, second), (JOB_3, first)]:
        assert rig.deliver(rig.spool_job(job_id, source)) == Result(job_id, "archive", True, "")
    assert rig.stored().read_bytes() == first.read_bytes()


def test_changed_bytes_for_same_sop_uid_are_sent_again(rig: Rig) -> None:
    first = rig.sample("a")
    changed = rig.sample("b", tags={"StudyDescription": "X"})
    assert first.read_bytes() != changed.read_bytes()
    assert rig.deliver(rig.spool_job(JOB_1, first)).delivered
    rig.stored().write_bytes(b"marker")

    result = rig.deliver(rig.spool_job(JOB_2, changed))

    assert result == Result(JOB_2, "archive", True, "")
    assert rig.stored().read_bytes() == changed.read_bytes()
    assert pydicom.dcmread(rig.stored()).StudyDescription == "X"


def test_same_bytes_to_another_destination_are_sent(rig: Rig) -> None:
    source = rig.sample("a")
    job = rig.spool_job(JOB_1, source, ("archive", "backup"))
    assert rig.deliver(job, "archive").reason == ""
    result = rig.deliver(job, "backup")
    assert result == Result(JOB_1, "backup", True, "")
    assert (rig.backup / STUDY / SERIES / f"{SOP}.dcm").read_bytes() == source.read_bytes()


def test_missing_spool_file_is_withdrawn(rig: Rig) -> None:
    job = make_header(JOB_1, ("archive",), sop_instance_uid=SOP)
    result = rig.deliver(job)
    assert (result.job_id, result.destination) == (JOB_1, "archive")
    assert result.delivered is False
    assert result.reason == "withdrawn"
    assert result.transient is False
    assert not rig.archive.exists()


def test_hostile_study_uid_is_refused_permanently(rig: Rig) -> None:
    source = rig.sample("a")
    ds = pydicom.dcmread(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID, as it should
        ds.StudyInstanceUID = "../../x"
        ds.save_as(source)
    assert pydicom.dcmread(source).StudyInstanceUID == "../../x"
    before = files_under(rig.tmp)
    job = rig.spool_job(JOB_1, source)

    result = rig.deliver(job)

    assert result.delivered is False
    assert result.reason == "invalid_uid"
    assert result.transient is False
    assert "StudyInstanceUID" in result.detail
    # Nothing new anywhere but the spool job itself (and the ledger files in the spool).
    new = {p for p in files_under(rig.tmp) - before if not p.is_relative_to(rig.spool.root)}
    assert new == set()
    assert not rig.archive.exists() or files_under(rig.archive) == set()
    assert not (rig.tmp / "x").exists()
    assert rig.thread.ledger is not None
    assert not rig.thread.ledger.has("archive", SOP, file_digest(source))


def test_hostile_sop_uid_is_refused_permanently(rig: Rig) -> None:
    source = rig.sample("a")
    ds = pydicom.dcmread(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SOPInstanceUID = "../../../escaped"
        ds.save_as(source)
    result = rig.deliver(rig.spool_job(JOB_1, source))
    assert (result.delivered, result.reason, result.transient) == (False, "invalid_uid", False)
    assert not list(rig.tmp.rglob("escaped*"))


def test_unreadable_instance_is_refused_permanently(rig: Rig) -> None:
    rig.spool.instance_path(JOB_1).write_bytes(b"not DICOM at all")
    result = rig.deliver(make_header(JOB_1, ("archive",), sop_instance_uid=SOP))
    assert (result.delivered, result.reason, result.transient) == (False, "unreadable", False)


def test_unwritable_archive_is_a_transient_io_error(rig: Rig) -> None:
    rig.archive.mkdir()
    (rig.archive / STUDY).write_bytes(b"a file where the study folder should be")
    job = rig.spool_job(JOB_1, rig.sample("a"))

    result = rig.deliver(job)

    assert (result.delivered, result.reason, result.transient) == (False, "io_error", True)
    # A failed delivery is not in the ledger: the retry really sends.
    (rig.archive / STUDY).unlink()
    assert rig.deliver(job, attempt=2) == Result(JOB_1, "archive", True, "")
    assert rig.stored().is_file()


def test_unexpected_error_is_a_transient_internal_failure(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = rig.spool_job(JOB_1, rig.sample("a"))
    destination = rig.thread._destination("archive")

    def explode(job: JobHeader, source: Path) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(destination, "deliver", explode)
    result = rig.deliver(job)
    assert (result.delivered, result.reason, result.transient) == (False, "internal", True)
    assert "boom" in result.detail
    monkeypatch.undo()
    assert rig.deliver(job).reason == ""  # not recorded as delivered by the failure


def test_two_destination_job_writes_the_spool_marker(rig: Rig) -> None:
    job = rig.spool_job(JOB_1, rig.sample("a"), ("archive", "backup"))
    assert rig.deliver(job, "archive") == Result(JOB_1, "archive", True, "")
    assert (rig.spool.jobs / f"{JOB_1}.archive.done").is_file()
    assert not (rig.spool.jobs / f"{JOB_1}.backup.done").exists()
    assert rig.deliver(job, "backup") == Result(JOB_1, "backup", True, "")
    assert (rig.spool.jobs / f"{JOB_1}.backup.done").is_file()


def test_duplicate_of_a_two_destination_job_also_writes_the_marker(rig: Rig) -> None:
    rig.skip_duplicates()
    source = rig.sample("a")
    assert rig.deliver(rig.spool_job(JOB_1, source)).delivered
    job = rig.spool_job(JOB_2, source, ("archive", "backup"))
    result = rig.deliver(job, "archive")
    assert (result.delivered, result.reason) == (True, "duplicate")
    assert (rig.spool.jobs / f"{JOB_2}.archive.done").is_file()


def test_failed_delivery_writes_no_marker(rig: Rig) -> None:
    source = rig.sample("a")
    ds = pydicom.dcmread(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SeriesInstanceUID = "1.2.x"
        ds.save_as(source)
    job = rig.spool_job(JOB_3, source, ("archive", "backup"))
    assert rig.deliver(job, "archive").reason == "invalid_uid"
    assert not list(rig.spool.jobs.glob("*.done"))


def test_without_a_ledger_every_delivery_is_sent(rig: Rig) -> None:
    # duplicate_window 0: run() opens no ledger, so nothing is suppressed.
    assert rig.thread.ledger is not None
    rig.thread.ledger.close()
    rig.thread.ledger = None
    job = rig.spool_job(JOB_1, rig.sample("a"))
    assert rig.deliver(job).reason == ""
    rig.stored().write_bytes(b"marker")
    assert rig.deliver(job).reason == ""
    assert rig.stored().read_bytes() != b"marker"


def test_spool_file_is_left_in_place(rig: Rig) -> None:
    job = rig.spool_job(JOB_1, rig.sample("a"))
    before = os.stat(rig.spool.instance_path(JOB_1))
    assert rig.deliver(job).delivered
    after = os.stat(rig.spool.instance_path(JOB_1))
    assert (before.st_ino, before.st_size) == (after.st_ino, after.st_size)


def test_duplicate_check_uses_a_mtime_independent_digest(rig: Rig) -> None:
    # Same bytes, fresh file (new inode and mtime): still the same digest, still suppressed.
    rig.skip_duplicates()
    source = rig.sample("a")
    assert rig.deliver(rig.spool_job(JOB_1, source)).delivered
    copy = rig.tmp / "copy.dcm"
    copy.write_bytes(source.read_bytes())
    os.utime(copy, ns=(1, 1))
    assert rig.deliver(rig.spool_job(JOB_2, copy)).reason == "duplicate"


# --- bugs: a Result must never be lost ---------------------------------------------------------


def test_spool_file_vanishing_after_the_exists_check_is_withdrawn(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.skip_duplicates()  # only then is the file read for its digest before the send
    job = rig.spool_job(JOB_1, rig.sample("a"))

    def racing_digest(path: Path) -> str:
        path.unlink()  # Spool.discard() runs in the acceptor right after the exists() check
        return file_digest(path)

    monkeypatch.setattr(delivery_module, "file_digest", racing_digest)
    result = rig.deliver(job)
    assert (result.delivered, result.reason, result.transient) == (False, "withdrawn", False)


def test_spool_file_vanishing_before_the_send_is_withdrawn(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.skip_duplicates()
    job = rig.spool_job(JOB_1, rig.sample("a"))

    def digest_then_vanish(path: Path) -> str:
        digest = file_digest(path)
        path.unlink()  # discarded by the acceptor while this delivery is under way
        return digest

    monkeypatch.setattr(delivery_module, "file_digest", digest_then_vanish)
    result = rig.deliver(job)
    assert (result.delivered, result.reason, result.transient) == (False, "withdrawn", False)


def test_ledger_write_failure_after_a_send_still_reports_delivered(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = rig.spool_job(JOB_1, rig.sample("a"))
    assert rig.thread.ledger is not None

    def full_disk(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(rig.thread.ledger, "record", full_disk)
    result = rig.deliver(job)
    assert rig.stored().is_file()
    assert result.delivered is True


def test_ledger_read_failure_still_yields_a_result(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = rig.spool_job(JOB_1, rig.sample("a"))
    assert rig.thread.ledger is not None

    def locked(*args: object) -> bool:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(rig.thread.ledger, "has_job", locked)
    result = rig.deliver(job)
    assert isinstance(result, Result)
    assert result.delivered or result.transient


def test_a_marker_the_spool_cannot_take_leaves_the_delivery_delivered(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The .done marker could not be written (ENOSPC, EIO, a directory in its place): the
    instance had arrived, yet the job was retried as `internal` until it became a dead
    letter. A marker only saves a redelivery after a crash: count it and go on."""
    from router.core import metrics

    job = rig.spool_job(JOB_1, rig.sample("a"), ("archive", "backup"))

    def no_room(job_id: str, destination: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rig.spool, "mark_delivered", no_room)
    before = metrics.SPOOL_ERRORS.labels("mark_delivered")._value.get()
    assert rig.deliver(job, "archive") == Result(JOB_1, "archive", True, "")
    assert metrics.SPOOL_ERRORS.labels("mark_delivered")._value.get() == before + 1
    assert rig.stored().is_file()


# What e53fa78 keyed a default de-identification's deliveries with: repr((morph, deidentify)).
E53FA78_DEID_REPR = (
    "((), DeidentifyConfig(profile='basic', retain_uids=False, retain_dates=False, "
    "retain_device_identity=False, retain_patient_characteristics=False, "
    "clean_descriptions=False, uid_root='2.25', patient_id=None, patient_name=None, keep=[], "
    "private_tags='remove'))")


def test_on_duplicate_skip_skips_what_the_version_before_the_upgrade_de_identified(
        rig: Rig) -> None:
    """A row the previous version recorded (its repr fingerprint) still names the bytes the
    destination got: the same file received again after the upgrade is skipped."""
    deidentifying = parse_config({
        "spool": {"path": str(rig.spool.root)},
        "destinations": {"archive": {"type": "folder", "path": str(rig.archive),
                                     "on_duplicate": "skip"}},
        "rules": [{"name": "research", "forward": ["archive"], "deidentify": {}}]})
    rig.thread.config = deidentifying
    rig.thread.preparer = Preparer(deidentifying, rig.spool, lambda: open_uid_map(rig.spool))
    source = rig.sample("a")
    before = hashlib.blake2b(f"{file_digest(source)}{E53FA78_DEID_REPR}".encode(),
                             digest_size=20).hexdigest()
    assert rig.thread.ledger is not None
    rig.thread.ledger.record("archive", SOP, before, JOB_1)
    job = dataclasses.replace(rig.spool_job(JOB_2, source), rules=("research",))
    assert rig.deliver(job) == Result(JOB_2, "archive", True, "duplicate")
    assert not rig.archive.exists()
