"""Relayed C-MOVEs shared by cells (spool.shared_state_dir): owners named with their cell,
judged by their process in their own cell and by their heartbeat in another, and the
instances one cell hands to another's move."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from router.core.config import SpoolConfig, parse_config
from router.core.errors import OutOfResources, RouterError
from router.core.owned_names import relayed_move_files, relayed_move_name
from router.core.process_identity import ProcessTag, own_tag
from router.core.spool import Spool
from router.relay import move_owner
from router.relay.move import RelayedMoves
from router.relay.move_handover import DRAFT_SECONDS, HandedInstances
from router.relay.move_owner import (
    FOREIGN_SILENCE_SECONDS,
    MoveOwner,
    OwnerLiveness,
    cell_id,
    parse_owner,
)
from router.relay.move_registry import MoveRegistry, RegistryUnavailable
from router.service.preflight import check_cell_id

CELL_A, CELL_B = "a" * 12, "b" * 12
TAG = ProcessTag(4242, "123456", "0badcafe")


def test_an_owner_names_its_cell_and_reads_back() -> None:
    for owner in (MoveOwner(TAG, CELL_A), MoveOwner(TAG), MoveOwner(ProcessTag(7), CELL_B)):
        assert parse_owner(str(owner)) == owner
    assert str(MoveOwner(TAG, CELL_A)) == "4242.123456.0badcafe@aaaaaaaaaaaa"
    for text in ("4242.123456.0badcafe@", "4242@short", "4242@AAAAAAAAAAAA", "x@" + CELL_A,
                 "4242.123456.0badcafe@aaaaaaaaaaaa@bbbbbbbbbbbb"):
        assert parse_owner(text) is None, text


def test_a_cell_keeps_one_id_for_its_acceptors_and_restarts(tmp_path: Path) -> None:
    first = cell_id(tmp_path)
    assert move_owner.is_cell(first)
    assert cell_id(tmp_path) == first  # another acceptor, a restart
    assert cell_id(tmp_path / ".." / tmp_path.name) == first
    other = tmp_path / "other-spool"
    other.mkdir()
    assert cell_id(other) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell-id", "other-spool"]


def test_a_damaged_cell_id_is_replaced_once_at_start(tmp_path: Path) -> None:
    """A power cut may leave `cell-id` empty (its data never reached the disk): the
    supervisor makes a new one before any acceptor reads it, and they all read that one
    (before: every acceptor failed with a traceback until someone removed the file)."""
    (tmp_path / "cell-id").write_text("")
    check_cell_id(tmp_path)
    made = (tmp_path / "cell-id").read_text()
    assert move_owner.is_cell(made)
    assert cell_id(tmp_path) == made and cell_id(tmp_path) == made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell-id"]
    with pytest.raises(RouterError, match="cannot write its cell-id"):
        check_cell_id(tmp_path / "no" / "such" / "spool")


def test_another_cells_owner_is_judged_by_its_heartbeat_never_by_pids(
        tmp_path: Path) -> None:
    """Cell B's pid table says nothing of cell A's processes: an owner of A is alive while
    its heartbeat is recent, whatever B's processes are, and gone once it is
    FOREIGN_SILENCE_SECONDS old or missing."""
    now = [time.time()]
    in_b = OwnerLiveness(tmp_path, CELL_B, alive=lambda tag: False, clock=lambda: now[0])
    in_a = OwnerLiveness(tmp_path, CELL_A)
    owner = in_a.me()
    assert owner == MoveOwner(own_tag(), CELL_A)
    assert not in_b(owner)  # never beat: nothing says it runs
    in_a.beat()
    assert in_b(owner)  # though B's pid table has no such process
    now[0] += FOREIGN_SILENCE_SECONDS - 1
    assert in_b(owner)
    now[0] += 2
    assert not in_b(owner)  # its cell died with the move open: expired
    # Its own cell judges it by its process, whatever the heartbeat's age.
    assert in_a(owner)
    assert not in_a(MoveOwner(ProcessTag(4242, "1", "0badcafe"), CELL_A))
    # And a cell that shares nothing by the process alone, as before.
    assert OwnerLiveness(tmp_path, None)(MoveOwner(own_tag()))


def test_heartbeats_of_gone_owners_are_swept(tmp_path: Path) -> None:
    in_a = OwnerLiveness(tmp_path, CELL_A)
    in_a.beat()
    stale = tmp_path / f"alive-{MoveOwner(TAG, CELL_B)}"
    stale.touch()
    old = time.time() - FOREIGN_SILENCE_SECONDS - 1
    os.utime(stale, (old, old))
    dead_here = tmp_path / f"alive-{MoveOwner(ProcessTag(4242, '1', '0badcafe'), CELL_A)}"
    dead_here.touch()
    in_a.sweep()
    assert [p.name for p in tmp_path.iterdir()] == [f"alive-{in_a.me()}"]


def test_a_move_of_another_cell_is_found_kept_and_expires(tmp_path: Path) -> None:
    """Cell A opens a move in the shared folder; cell B finds it for the upstream's
    instance, never takes its ID while A beats, and takes it once A stopped beating."""
    a = MoveRegistry(tmp_path, message_ids=1, cell=CELL_A)
    b = MoveRegistry(tmp_path, message_ids=1, cell=CELL_B)
    move = a.open("DICOM-ROUTER", "PACS")
    assert b.owner(move.message_id, "DICOM-ROUTER", "PACS") == MoveOwner(own_tag(), CELL_A)
    assert b.awaits("PACS") and b.relays(a.me, move.message_id)
    assert not b.relays(b.me, move.message_id)  # A's, not B's
    with pytest.raises(RuntimeError):
        b.open("DICOM-ROUTER", "PACS")  # the only ID is A's move's
    old = time.time() - FOREIGN_SILENCE_SECONDS - 1
    os.utime(tmp_path / f"alive-{a.me}", (old, old))
    # Gone for B, though A's process runs (one process here): B never asks its pid table.
    assert b.owner(move.message_id, "DICOM-ROUTER", "PACS") is None
    assert b.closed(move.message_id, "DICOM-ROUTER", "PACS")  # late: refused, not new work
    assert not b.relays(a.me, move.message_id)  # what was handed to it is swept
    taken = b.open("DICOM-ROUTER", "PACS")
    a.close(move)  # A comes back and ends its move: B's entry is not A's to close
    assert a.owner(taken.message_id, "DICOM-ROUTER", "PACS") == b.me


def test_a_closed_move_of_another_cell_refuses_its_late_instances(tmp_path: Path) -> None:
    a = MoveRegistry(tmp_path, cell=CELL_A)
    b = MoveRegistry(tmp_path, cell=CELL_B)
    move = a.open("DICOM-ROUTER", "PACS")
    a.close(move)
    # Gone for B, though A's process runs (one process here): B never asks its pid table.
    assert b.owner(move.message_id, "DICOM-ROUTER", "PACS") is None
    assert b.closed(move.message_id, "DICOM-ROUTER", "PACS")


def test_a_handed_instance_is_the_owners_alone_and_swept_once_its_move_is_over(
        tmp_path: Path) -> None:
    spool, shared = tmp_path / "spool", tmp_path / "shared"
    spool.mkdir()
    over: set[tuple[MoveOwner, int]] = set()
    handed = HandedInstances(shared, lambda owner, message_id: (owner, message_id) not in over)
    owner, other = MoveOwner(TAG, CELL_A), MoveOwner(ProcessTag(5), CELL_A)
    for n, who in enumerate((owner, owner, other)):
        source = spool / f"received-{n}.dcm"
        source.write_bytes(b"instance %d" % n)
        handed.put(source, who, 7)
        assert not source.exists()
    mine = handed.files(owner, 7)
    assert sorted(p.read_bytes() for p in mine) == [b"instance 0", b"instance 1"]
    assert handed.files(owner, 8) == [] and len(handed.files(other, 7)) == 1
    draft = shared / ".cut-short.tmp"
    draft.write_bytes(b"half")
    over.add((other, 7))  # ended, or its owner gone
    assert handed.sweep() == 0  # its owner's own clearing first
    old = time.time() - DRAFT_SECONDS - 1
    for path in shared.iterdir():
        os.utime(path, (old, old))
    assert handed.sweep() == 2
    assert sorted(handed.files(owner, 7)) == sorted(mine)  # still in progress, however old
    assert sorted(p.name for p in shared.iterdir()) == sorted(p.name for p in mine)


def test_an_instance_the_shared_volume_refuses_is_out_of_resources(tmp_path: Path) -> None:
    """Never Success for an instance that is not durable on the shared volume: the
    upstream may send it again."""
    shared = tmp_path / "shared"
    handed = HandedInstances(shared, lambda owner, message_id: True)
    source = tmp_path / "received.dcm"
    source.write_bytes(b"instance")
    shared.rmdir()  # the volume gone
    with pytest.raises(OutOfResources):
        handed.put(source, MoveOwner(TAG, CELL_A), 7)
    assert source.exists()


def test_a_shared_folder_gone_for_now_is_said_so_and_never_raises_elsewhere(
        tmp_path: Path) -> None:
    """Regression: with the shared volume away, a quiet association's network_timeout
    asked `awaits` (FileNotFoundError: a traceback, the association dropped), a new move
    failed as "unexpected" with "router internal error", and one in progress raised on
    its handed instances, leaving its own instances in relay/. Now: no move waits, a new
    one is refused with RegistryUnavailable (a clear status), one in progress goes on
    with its own cell's instances."""
    spool = Spool(tmp_path / "spool")
    spool.relay.mkdir(parents=True)
    moves = RelayedMoves(spool, SpoolConfig(path=tmp_path / "spool",
                                            shared_state_dir=tmp_path / "shared"))
    move = moves.moves.open("DICOM-ROUTER", "PACS")
    own = spool.relay / relayed_move_name(own_tag(), move.message_id)
    own.write_bytes(b"instance")
    (tmp_path / "shared").rename(tmp_path / "away")
    assert not moves.moves.awaits("PACS")
    with pytest.raises(RegistryUnavailable, match="cannot register a C-MOVE in"):
        moves.moves.open("DICOM-ROUTER", "PACS")
    assert moves._handed_files(move.message_id) == []
    moves.clear(move.message_id)
    assert not own.exists()


def test_a_move_ending_while_the_shared_folder_is_away_is_closed_once_it_is_back(
        tmp_path: Path) -> None:
    """Regression: closing (or releasing) a move while the shared volume was away failed
    silently, and once it was back the entry named a live acceptor: a move in progress for
    ever, whose late instances were taken for nobody and whose upstream was awaited."""
    shared = tmp_path / "moves"
    a = MoveRegistry(shared, cell=CELL_A)
    b = MoveRegistry(shared, cell=CELL_B)
    relayed, passed = a.open("DICOM-ROUTER", "PACS"), a.reserve()
    shared.rename(tmp_path / "away")
    a.close(relayed)
    a.release(passed)
    (tmp_path / "away").rename(shared)
    a.tend()
    assert b.owner(relayed.message_id, "DICOM-ROUTER", "PACS") is None
    assert b.closed(relayed.message_id, "DICOM-ROUTER", "PACS")  # late: refused
    assert not b.awaits("PACS")
    assert sorted(p.name for p in shared.iterdir() if not p.name.startswith("alive-")) == [
        f"closed-{relayed.message_id}"]


def test_an_upstreams_instance_is_refused_for_now_while_the_shared_moves_is_away(
        tmp_path: Path) -> None:
    """Regression: with the shared moves/ away no move was found, and the relay-mode
    upstream's instance was routed as new work (forwarded by the rules, Success to the
    upstream) while its move counted it failed. Now 0xA700: the upstream may send it
    again; another party's C-STORE is still new work."""
    config = parse_config({
        "ae_title": "DICOM-ROUTER",
        "destinations": {"archive": {"type": "dicom", "ae_title": "ARCHIVE", "host": "h",
                                     "port": 104, "move_mode": "relay"}},
        "spool": {"path": str(tmp_path / "spool"),
                  "shared_state_dir": str(tmp_path / "shared")},
        "rules": [{"name": "qr", "query": ["archive"]}]})
    (tmp_path / "spool").mkdir()
    moves = RelayedMoves(Spool(tmp_path / "spool"), config.spool)
    source = tmp_path / "received.dcm"
    source.write_bytes(b"instance")
    (tmp_path / "shared").rename(tmp_path / "away")
    with pytest.raises(OutOfResources):
        moves.take_instance(7, "DICOM-ROUTER", "ARCHIVE", source, config)
    assert source.exists()
    assert not moves.take_instance(7, None, "MODALITY", source, config)  # new work


def test_swept_instances_of_a_move_that_is_over_are_said_never_delivered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: the instances handed to a move whose cell died (the upstream heard
    Success for each) were removed a few minutes later without a word."""
    handed = HandedInstances(tmp_path / "shared", lambda owner, message_id: False)
    for n in range(2):
        source = tmp_path / f"received-{n}.dcm"
        source.write_bytes(b"instance")
        handed.put(source, MoveOwner(TAG, CELL_A), 57901)
    draft = tmp_path / "shared" / ".cut-short.tmp"
    draft.write_bytes(b"half")
    old = time.time() - DRAFT_SECONDS - 1
    for path in (tmp_path / "shared").iterdir():
        os.utime(path, (old, old))
    assert handed.sweep() == 3
    assert "removed 2 instance(s) handed over for relayed C-MOVE(s) 57901" in caplog.text
    assert "never delivered" in caplog.text


def test_a_move_ends_while_the_shared_volume_is_away(tmp_path: Path) -> None:
    """Regression: the listing of move-instances/ (each turn of a move's loop, its clearing
    at the end and the late clearing's timer thread) raised when the shared volume was away
    (unmounted, a stale NFS handle): the move ended as "failed unexpectedly" and the timer
    thread died with a traceback. Its own instances still go; the handed ones once it is
    back."""
    settings = parse_config({
        "spool": {"path": str(tmp_path / "spool"), "shared_state_dir": str(tmp_path / "shared")},
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": 104}},
        "rules": [{"name": "all", "forward": ["pacs"]}]}).spool
    spool = Spool(settings.path).create()
    moves = RelayedMoves(spool, settings)
    move = moves.moves.open("DICOM-ROUTER", "PACS")
    (spool.relay / relayed_move_name(own_tag(), move.message_id)).write_bytes(b"left")
    (tmp_path / "shared" / "move-instances").rmdir()  # the volume away
    moves.clear(move.message_id)
    assert relayed_move_files(spool.relay, move.message_id) == []
