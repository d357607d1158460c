"""router/acceptor/passcodes.py: what a user identity check costs, and whom."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from router.acceptor import passcodes
from router.acceptor.passcodes import PasscodeCheck, hash_passcode


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, str]]:
    """Every PBKDF2 check made, and at most one at a time (asserted)."""
    made: list[tuple[bytes, str]] = []
    running = threading.Semaphore(1)
    real = passcodes.passcode_matches

    def counted(passcode: bytes, stored: str) -> bool:
        assert running.acquire(blocking=False), "two hashes at once"
        try:
            made.append((passcode, stored))
            time.sleep(0.01)  # long enough for another thread to try
            return real(passcode, stored)
        finally:
            running.release()

    monkeypatch.setattr(passcodes, "passcode_matches", counted)
    return made


def test_an_unknown_username_costs_what_a_wrong_passcode_costs(hashes: list[Any]) -> None:
    """Before, an unknown username was refused at once and a known one after the hash:
    the time of the refusal told which usernames exist."""
    check = PasscodeCheck()
    stored = hash_passcode("right")
    assert not check.matches("tech", b"wrong", stored)
    assert not check.matches("nobody", b"wrong", None)
    assert len(hashes) == 2
    iterations = [int(s.split("$")[1]) for _, s in hashes]
    assert iterations == [passcodes.PBKDF2_ITERATIONS] * 2


def test_a_passed_check_is_remembered_until_the_config_changes(hashes: list[Any]) -> None:
    check = PasscodeCheck()
    stored = hash_passcode("right", iterations=1000)
    assert check.matches("tech", b"right", stored)
    assert check.matches("tech", b"right", stored)
    assert len(hashes) == 1  # the second association paid no hash
    assert not check.matches("tech", b"wrong", stored)
    assert not check.matches("other", b"right", None)  # remembered per username
    changed = hash_passcode("new", iterations=1000)
    assert not check.matches("tech", b"right", changed)  # the old passcode no longer opens
    assert check.matches("tech", b"new", changed)
    assert len(hashes) == 5


def test_a_flood_of_checks_hashes_one_at_a_time(hashes: list[Any]) -> None:
    check = PasscodeCheck()
    stored = hash_passcode("right", iterations=1000)
    threads = [threading.Thread(target=check.matches, args=("tech", b"wrong", stored))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(hashes) == 8  # each waited its turn (the fixture fails on overlap)
