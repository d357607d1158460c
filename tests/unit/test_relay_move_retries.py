"""router/relay/move.py: a relayed C-MOVE's sub-operation to a busy move destination."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from router.core.errors import DeliveryError
from router.relay import move as move_module
from router.relay.move import Delivery
from router.relay.move_registry import MoveRelay


class BusyOnce:
    """A move destination that serves someone else at the first try, then takes it."""

    name = "TARGET"

    def __init__(self) -> None:
        self.tries = 0

    def send(self, job: Any, path: Path, originator: tuple[str, int]) -> int:
        self.tries += 1
        if self.tries == 1:
            raise DeliveryError("busy", "TARGET is serving another association", transient=True)
        return 0x0000


class Clock:
    """move.py's `time`: a monotonic clock that sleeping moves forward."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Waiting:
    """The requester's side: still there, not cancelled."""

    def cancelled(self) -> bool:
        return False

    def gone(self) -> bool:
        return False


def test_a_sub_operation_long_after_the_move_started_is_still_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the retry window ran from the move's start (its request_timeout), so an
    instance that arrived after a long transfer (minutes, while the timeouts count silence)
    had none left, and a destination busy for a moment failed it. The window now starts
    with each sub-operation."""
    sender = BusyOnce()
    delivery = Delivery(Waiting(), None, sender, tmp_path, ("VIEWER", 7),  # type: ignore[arg-type]
                        (), threading.Lock(), retry_window=30.0)
    clock = Clock(move_module.time.monotonic() + 3600.0)  # an hour into the move
    monkeypatch.setattr(move_module, "time", clock)
    instance = tmp_path / "0000000000000001aaaaaaaa.dcm"
    instance.write_bytes(b"instance")
    assert delivery._send(instance) == 0x0000
    assert sender.tries == 2


def test_a_sub_operation_busy_past_its_window_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(1000.0)
    monkeypatch.setattr(move_module, "time", clock)

    class AlwaysBusy(BusyOnce):
        def send(self, job: Any, path: Path, originator: tuple[str, int]) -> int:
            self.tries += 1
            raise DeliveryError("busy", "TARGET is serving another association",
                                transient=True)

    sender = AlwaysBusy()
    delivery = Delivery(Waiting(), None, sender, tmp_path, ("VIEWER", 7),  # type: ignore[arg-type]
                        (), threading.Lock(), retry_window=5.0)
    with pytest.raises(DeliveryError):
        delivery._send(tmp_path / "0000000000000001aaaaaaaa.dcm")
    assert 2 <= sender.tries <= 6 and clock.now - 1000.0 <= 5.0


def test_an_instance_that_cannot_be_read_fails_alone_not_the_move(tmp_path: Path) -> None:
    """Regression: an instance handed over by another cell, listed, then gone with the
    shared volume (renamed away, unmounted) raised FileNotFoundError out of the move: the
    requester got "router internal error" for every instance, delivered ones included.
    Now that one is counted failed and the others are delivered."""

    class Reading(BusyOnce):
        def send(self, job: Any, path: Path, originator: tuple[str, int]) -> int:
            path.read_bytes()  # the sender streams the file
            return 0x0000

    gone = tmp_path / "shared" / "handed.dcm"
    here = tmp_path / "relay" / "mine.dcm"
    here.parent.mkdir()
    here.write_bytes(b"instance")
    delivery = Delivery(Waiting(), MoveRelay(7, "DICOM-ROUTER"), Reading(),  # type: ignore[arg-type]
                        tmp_path / "relay", ("VIEWER", 7), (), threading.Lock(),
                        handed=lambda message_id: [gone, here])
    delivery.arrived()
    assert (delivery.counts.completed, delivery.counts.failed) == (1, 1)
