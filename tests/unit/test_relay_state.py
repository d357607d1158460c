"""router/relay/state.py and move_registry.py: pending storage commitments and the relayed
C-MOVEs in progress, shared by the acceptor processes through the spool."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest

from router.core.config import RouterConfig, parse_config
from router.core.process_identity import ProcessTag, own_tag, process_start
from router.relay import state
from router.relay.move_owner import MoveOwner
from router.relay.move_registry import (
    CLOSED_SECONDS,
    ArrivalWatch,
    ArrivingInstance,
    MoveRegistry,
)
from router.relay.state import (
    COMMITMENT_MEMORY_SECONDS,
    MAX_IN_MEMORY,
    SWEEP_SECONDS,
    Commitments,
    upstream_titles,
)


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


def test_a_pending_commitment_is_fsynced_with_its_folder_before_it_is_relayed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record was written and renamed with no fsync: a power cut after the requester's
    N-ACTION-RSP lost it, and the upstream's result was then refused as unknown."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    folder = tmp_path / "commitments"
    Commitments(folder).remember("1.2.3.4", "CT1", (("pacs", ("PACS",)),))
    assert [p.name for p in folder.iterdir()] == ["1.2.3.4.json"]
    record, directory = synced
    assert Path(record).parent == folder and "1.2.3.4.json" in Path(record).name
    assert directory == str(folder)  # the rename itself survives
    restored = Commitments(folder).take("1.2.3.4")
    assert restored is not None and restored.upstreams == (("pacs", ("PACS",)),)


def test_a_hostile_transaction_uid_never_becomes_a_file(tmp_path: Path) -> None:
    commitments = Commitments(tmp_path)
    commitments.remember("../../etc/passwd", "CT1")
    assert list(tmp_path.iterdir()) == []
    assert commitments.take("../../etc/passwd") is not None  # in memory still


def test_unreadable_files_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "1.2.3.json").write_text("{not json")
    assert Commitments(tmp_path).take("1.2.3") is None
    assert not (tmp_path / "1.2.3.json").exists()


def test_a_commitment_one_acceptor_relayed_is_taken_by_another_once(tmp_path: Path) -> None:
    """The upstream's N-EVENT-REPORT comes on an association of its own, which the kernel may
    give to any acceptor on the port (listen.acceptors)."""
    first, second = Commitments(tmp_path), Commitments(tmp_path)
    first.remember("1.2.3.6", "CT1")
    taken = second.take("1.2.3.6")
    assert taken is not None and taken.requester_ae == "CT1"
    assert first.take("1.2.3.6") is None  # the one that relayed it does not deliver it again


def test_commitments_older_than_a_day_are_forgotten(tmp_path: Path) -> None:
    commitments = Commitments(tmp_path)
    commitments.remember("1.2.3.7", "CT1")
    old = os.path.getmtime(tmp_path / "1.2.3.7.json") - COMMITMENT_MEMORY_SECONDS - 1
    os.utime(tmp_path / "1.2.3.7.json", (old, old))
    Commitments(tmp_path).remember("1.2.3.8", "CT1")  # another process: it looks
    assert commitments.take("1.2.3.7") is None
    assert commitments.take("1.2.3.8") is not None


def test_the_folder_is_looked_through_once_a_minute_not_per_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each N-ACTION stat-ed every pending file to find expired ones: on a shared folder
    (spool.shared_state_dir on NFS) a round trip to the server per file and request."""
    clock = [1000.0]
    monkeypatch.setattr(state.time, "monotonic", lambda: clock[0])
    commitments = Commitments(tmp_path)
    commitments.remember("1.2.3.7", "CT1")
    old = os.path.getmtime(tmp_path / "1.2.3.7.json") - COMMITMENT_MEMORY_SECONDS - 1
    os.utime(tmp_path / "1.2.3.7.json", (old, old))
    commitments.remember("1.2.3.8", "CT1")
    assert (tmp_path / "1.2.3.7.json").exists()  # not looked for again within the minute
    clock[0] += SWEEP_SECONDS
    commitments.remember("1.2.3.9", "CT1")
    assert not (tmp_path / "1.2.3.7.json").exists()


def test_commitments_held_in_memory_are_bounded() -> None:
    """A Transaction UID that cannot be a file name is held in memory: a requester sending
    many could grow it for 24 hours. The oldest go first."""
    commitments = Commitments(None)
    for n in range(MAX_IN_MEMORY + 5):
        commitments.remember(f"x{n}", "CT1")
    assert commitments.take("x0") is None and commitments.take("x4") is None
    assert commitments.take("x5") is not None
    assert commitments.take(f"x{MAX_IN_MEMORY + 4}") is not None


def _pacs(**extra: object) -> RouterConfig:
    pacs = {"type": "dicom", "ae_title": "PACS", "host": "10.0.0.1", "port": 104} | extra
    return parse_config({"destinations": {"pacs": pacs},
                         "rules": [{"name": "qr", "query": ["pacs"]}]})


def test_only_the_upstream_the_n_action_went_to_may_report_its_result(tmp_path: Path) -> None:
    """A result from another AE could tell the requester "all committed" for instances the
    upstream never got, and the requester deletes its copies."""
    config = _pacs(store_ae_titles=["PACS_SCU"])
    Commitments(tmp_path).remember("1.2.3.9", "CT1", upstream_titles(config, ["pacs"]))
    pending = Commitments(tmp_path).peek("1.2.3.9")  # another acceptor, after a restart
    assert pending is not None and pending.upstream_names() == "pacs (PACS/PACS_SCU)"
    assert pending.reported_by("PACS", config) and pending.reported_by("PACS_SCU ", config)
    assert not pending.reported_by("FORGER", config)
    assert Commitments(tmp_path).take("1.2.3.9") is not None  # peek left it pending


def test_a_reload_adding_an_upstreams_store_ae_title_lets_its_result_through(
        tmp_path: Path) -> None:
    commitments = Commitments(tmp_path)
    commitments.remember("1.2.3.10", "CT1", upstream_titles(_pacs(), ["pacs"]))
    pending = commitments.peek("1.2.3.10")
    assert pending is not None and not pending.reported_by("PACS_SCU", _pacs())
    assert pending.reported_by("PACS_SCU", _pacs(store_ae_titles=["PACS_SCU"]))


def test_a_commitment_kept_before_upstreams_were_recorded_takes_any_reporter(
        tmp_path: Path) -> None:
    """An upgrade loses no pending commitment: those on the spool from before name no
    upstream."""
    (tmp_path / "1.2.3.11.json").write_text('{"requester_ae": "CT1", "at": 1e12}')
    pending = Commitments(tmp_path).peek("1.2.3.11")
    assert pending is not None and pending.reported_by("ANYONE", _pacs())


def test_a_restored_commitment_keeps_its_upstreams(tmp_path: Path) -> None:
    commitments = Commitments(tmp_path)
    commitments.remember("1.2.3.12", "CT1", upstream_titles(_pacs(), ["pacs"]))
    taken = commitments.take("1.2.3.12")
    assert taken is not None
    commitments.restore("1.2.3.12", taken)
    again = commitments.take("1.2.3.12")
    assert again is not None and not again.reported_by("FORGER", _pacs())


def test_concurrent_moves_get_distinct_message_ids_and_only_their_instances(
        tmp_path: Path) -> None:
    moves = MoveRegistry(tmp_path)
    first, second = moves.open("DICOM-ROUTER", "PACS"), moves.open("DICOM-ROUTER", "PACS")
    assert first.message_id != second.message_id
    # AE titles padded:
    assert moves.owner(first.message_id, "DICOM-ROUTER ", "PACS ") == MoveOwner(own_tag())
    assert moves.owner(first.message_id, "SOMEONE-ELSE", "PACS") is None
    assert moves.owner(None, "DICOM-ROUTER", "PACS") is None
    assert moves.owner(0, "DICOM-ROUTER", "PACS") is None
    assert moves.owner(70000, "DICOM-ROUTER", "PACS") is None
    moves.close(first)
    assert moves.owner(first.message_id, "DICOM-ROUTER", "PACS") is None
    assert moves.owner(second.message_id, "DICOM-ROUTER", "PACS") == MoveOwner(own_tag())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [str(second.message_id), f"closed-{first.message_id}"])


def test_an_upstream_naming_itself_as_originator_is_matched_on_its_own_association(
        tmp_path: Path) -> None:
    """pynetdicom's C-MOVE SCP puts its own AE title as Move Originator AE Title: matched
    when its association calls from the move's upstream, never for another party's push."""
    moves = MoveRegistry(tmp_path)
    move = moves.open("DICOM-ROUTER", "PACS")
    assert moves.owner(move.message_id, "PACS", "PACS ") == MoveOwner(own_tag())
    assert moves.owner(move.message_id, "", "PACS") == MoveOwner(own_tag())
    assert moves.owner(move.message_id, "DICOM-ROUTER", "PACS") == MoveOwner(own_tag())
    # A workstation's own move from the PACS to the router, with the same message ID:
    assert moves.owner(move.message_id, "WORKSTATION", "PACS") is None
    assert moves.owner(move.message_id, "PACS", "OTHER-PACS") is None
    assert not moves.closed(move.message_id, "WORKSTATION", "PACS")


def test_only_the_moves_upstream_adds_to_it_whatever_originator_it_names(
        tmp_path: Path) -> None:
    """Another sender naming the router as Move Originator and the move's message ID is not
    the move's, in progress or closed: its C-STORE is ordinary work for the rules."""
    moves = MoveRegistry(tmp_path)
    move = moves.open("DICOM-ROUTER", "PACS")
    for originator in ("DICOM-ROUTER", "", "CT2"):
        assert moves.owner(move.message_id, originator, "CT2") is None
    moves.close(move)
    for originator in ("DICOM-ROUTER", "", "CT2"):
        assert not moves.closed(move.message_id, originator, "CT2")
    assert moves.closed(move.message_id, "DICOM-ROUTER", "PACS")


def test_an_upstream_storing_under_its_store_ae_titles_adds_to_its_move(
        tmp_path: Path) -> None:
    """A PACS configured as QRSCP whose storage SCU calls as QR (store_ae_titles: [QR]):
    its instances are the move's, in progress and closed, across acceptors (the entry is
    read back from the file); another AE naming the move is a stray, for a warning."""
    moves = MoveRegistry(tmp_path)
    move = moves.open("DICOM-ROUTER", "QRSCP", "pacs", ("QR",))
    elsewhere = MoveRegistry(tmp_path)  # another acceptor process reads the entry
    for originator in ("DICOM-ROUTER", "QR", "QRSCP", ""):
        assert elsewhere.owner(move.message_id, originator, "QR ") == MoveOwner(own_tag())
        assert elsewhere.stray(move.message_id, originator, "QR") is None
    assert elsewhere.owner(move.message_id, "DICOM-ROUTER", "CT2") is None
    stray = elsewhere.stray(move.message_id, "DICOM-ROUTER", "CT2")
    assert stray is not None and stray.senders() == ("QRSCP", "QR")
    assert stray.destination == "pacs"
    assert elsewhere.stray(move.message_id, "CT2 ", "CT2") is not None  # naming itself
    assert elsewhere.stray(move.message_id, "", "CT2") is None  # names no originator
    assert elsewhere.stray(move.message_id, "WORKSTATION", "CT2") is None
    assert elsewhere.stray(move.message_id % 65535 + 1, "DICOM-ROUTER", "CT2") is None
    moves.close(move)
    assert elsewhere.closed(move.message_id, "DICOM-ROUTER", "QR")
    assert elsewhere.stray(move.message_id, "DICOM-ROUTER", "CT2") is None  # not open


def test_only_the_upstreams_instances_of_a_move_in_progress_are_heard_by_its_worker(
        tmp_path: Path) -> None:
    """An instance of the move arriving at any acceptor touches the move's entry, which
    the worker waiting on the upstream watches; another party's C-STORE naming the move, a
    pass-through move's ID and a move that ended are never heard."""
    moves = MoveRegistry(tmp_path)
    move = moves.open("DICOM-ROUTER", "QRSCP", "pacs", ("QR",))
    passing = moves.reserve()
    os.utime(tmp_path / str(move.message_id), (1, 1))  # opened a while ago
    watch = ArrivalWatch(tmp_path, move.message_id)
    elsewhere = MoveRegistry(tmp_path)  # the acceptor process the instance reaches
    assert not watch()
    for calling, originator in (("CT2", "DICOM-ROUTER"), ("CT2", ""), ("QR", "WORKSTATION")):
        assert elsewhere.arriving(move.message_id, originator, calling) is None
    assert elsewhere.arriving(passing.message_id, "DICOM-ROUTER", "QRSCP") is None
    arriving = elsewhere.arriving(move.message_id, "DICOM-ROUTER", "QR ")
    assert arriving is not None
    arriving.data()
    assert watch()
    assert not watch()  # heard once per touch
    moves.close(move)
    assert elsewhere.arriving(move.message_id, "DICOM-ROUTER", "QR") is None
    ArrivingInstance(elsewhere, move.message_id).data()  # one that began before the close
    assert not watch() and not (tmp_path / str(move.message_id)).exists()


def test_a_move_in_progress_awaits_its_upstreams_and_store_ae_titles_only(
        tmp_path: Path) -> None:
    """The acceptor keeps a silent association open while a move awaits its calling AE."""
    alive = {os.getpid()}
    moves = MoveRegistry(tmp_path, alive=lambda writer: writer.pid in alive)
    move = moves.open("DICOM-ROUTER", "QRSCP", "pacs", ("QR",))
    moves.reserve()  # a pass-through move awaits nobody
    assert moves.awaits("QRSCP") and moves.awaits("QR ")
    assert not moves.awaits("CT2") and not moves.awaits("DICOM-ROUTER")
    alive.clear()  # its acceptor died: the move is over
    assert not moves.awaits("QR")
    alive.add(os.getpid())
    moves.close(move)
    assert not moves.awaits("QRSCP") and not moves.awaits("QR")


def test_an_instance_of_a_move_that_ended_is_told_apart_from_new_work(
        tmp_path: Path) -> None:
    moves = MoveRegistry(tmp_path)
    move = moves.open("DICOM-ROUTER", "PACS")
    assert not moves.closed(move.message_id, "DICOM-ROUTER", "PACS")
    moves.close(move)
    assert moves.owner(move.message_id, "DICOM-ROUTER", "PACS") is None
    assert moves.closed(move.message_id, "DICOM-ROUTER", "PACS")
    assert moves.closed(move.message_id, "PACS", "PACS")
    assert not moves.closed(move.message_id, "WORKSTATION", "PACS")  # someone else's push
    assert not moves.closed(move.message_id % 65535 + 1, "DICOM-ROUTER", "PACS")
    closed = tmp_path / f"closed-{move.message_id}"
    old = closed.stat().st_mtime - CLOSED_SECONDS - 1
    os.utime(closed, (old, old))
    assert not moves.closed(move.message_id, "DICOM-ROUTER", "PACS")  # long forgotten


IDS = 200  # a small ID space, so that the processes try the same IDs and can run out


def _open_moves(folder: Path, count: int, results: multiprocessing.Queue[list[int]]) -> None:
    registry = MoveRegistry(folder, message_ids=IDS)
    results.put([registry.open("DICOM-ROUTER", "PACS").message_id for _ in range(count)])


def test_acceptor_processes_never_share_a_message_id_and_find_each_others_moves(
        tmp_path: Path) -> None:
    """Several acceptors on one port: an instance of a move may reach any of them."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[list[int]] = context.Queue()
    for message_id in range(1, 41):  # taken by this process: skipped
        (tmp_path / str(message_id)).write_text(f"{os.getpid()} OTHER\nPACS")
    children = [context.Process(target=_open_moves, args=(tmp_path, 40, results))
                for _ in range(3)]
    for child in children:
        child.start()
    opened = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
    claimed = [message_id for batch in opened for message_id in batch]
    assert len(claimed) == len(set(claimed)) == 120 and min(claimed) > 40
    # The children have exited: their moves are over, and their IDs free again.
    here = MoveRegistry(tmp_path, message_ids=IDS)
    assert all(here.owner(message_id, "DICOM-ROUTER", "PACS") is None
               for message_id in claimed)
    assert here.open("DICOM-ROUTER", "PACS").message_id > 40


def test_a_move_of_an_acceptor_that_died_matches_nothing_and_its_id_is_taken_again(
        tmp_path: Path) -> None:
    alive = {os.getpid()}
    registry = MoveRegistry(tmp_path, alive=lambda writer: writer.pid in alive, message_ids=IDS)
    (tmp_path / "7").write_text("999999 DICOM-ROUTER\nPACS")  # an acceptor that died
    assert registry.owner(7, "DICOM-ROUTER", "PACS") is None
    assert registry.closed(7, "DICOM-ROUTER", "PACS")  # its late instances are refused
    for message_id in range(1, IDS + 1):
        if message_id != 7:
            (tmp_path / str(message_id)).write_text(f"{os.getpid()} OTHER")
    assert registry.open("DICOM-ROUTER", "PACS").message_id == 7
    assert registry.owner(7, "DICOM-ROUTER", "PACS") == MoveOwner(own_tag())
    with pytest.raises(RuntimeError, match="in progress"):
        registry.open("DICOM-ROUTER", "PACS")


def test_a_pass_through_move_never_shares_a_recently_closed_moves_id(tmp_path: Path) -> None:
    """A pass-through C-MOVE's ID is reserved: no relayed move's (in progress or closed) and
    no instance naming it is taken or refused; a closed ID is reused only when no other is
    free."""
    moves = MoveRegistry(tmp_path, message_ids=2)
    relayed = moves.open("ROUTER", "PACS")
    moves.close(relayed)
    passed = moves.reserve()
    assert passed.message_id != relayed.message_id
    for originator in ("ROUTER", "PACS", ""):
        assert moves.owner(passed.message_id, originator, "PACS") is None
        assert not moves.closed(passed.message_id, originator, "PACS")
    assert moves.open("ROUTER", "PACS").message_id == relayed.message_id  # none other free
    moves.release(passed)
    assert not (tmp_path / str(passed.message_id)).exists()


def test_a_move_left_by_an_earlier_run_is_over_though_its_pid_lives(tmp_path: Path) -> None:
    """The spool (and moves/) outlives a restart, whose processes may get the old pids: a
    container's acceptor often gets its predecessor's."""
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        started = process_start(stranger.pid)
        assert started is not None
        earlier = ProcessTag(stranger.pid, str(int(started) - 1), own_tag().boot)
        (tmp_path / "7").write_text(f"{earlier} DICOM-ROUTER\nPACS")
        registry = MoveRegistry(tmp_path, message_ids=IDS)
        assert registry.owner(7, "DICOM-ROUTER", "PACS") is None
        assert registry.closed(7, "DICOM-ROUTER", "PACS")  # its late instances are refused
        assert not registry.awaits("PACS")
    finally:
        stranger.kill()
        stranger.wait()
