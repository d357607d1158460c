"""router/broker/unwritten_dead_letters.py: dead letters the spool could not take yet."""

from __future__ import annotations

from router.broker.deliveries import DeadLetter, Delivery, Settled
from router.broker.unwritten_dead_letters import UnwrittenDeadLetters

from .helpers import make_header


def test_a_job_settles_only_once_its_last_dead_letter_is_written() -> None:
    job = make_header("j1", ("pacs", "archive"))
    other = make_header("j2", ("pacs",))
    unwritten = UnwrittenDeadLetters()
    unwritten.add(DeadLetter(Delivery(job, "pacs"), "rejected", ""))
    unwritten.add(DeadLetter(Delivery(job, "archive"), "rejected", ""))
    unwritten.add(DeadLetter(Delivery(other, "pacs"), "rejected", ""))
    assert unwritten.hold(Settled(job)) and unwritten.hold(Settled(other))
    assert not unwritten.hold(Settled(make_header("j3")))  # nothing waits: remove it
    assert unwritten.by_destination() == {"pacs": 2, "archive": 1}

    tried: list[tuple[str, str]] = []

    def full(letter: DeadLetter) -> bool:
        tried.append(letter.delivery.key)
        return False

    assert unwritten.retry(full) == []
    assert tried == [("j1", "pacs")]  # a full spool: one try, not one per letter

    written = iter([True, False])
    assert unwritten.retry(lambda letter: next(written)) == []  # j1's archive still waits
    assert unwritten.retry(lambda letter: True) == [Settled(job), Settled(other)]
    assert unwritten.by_destination() == {}
    assert unwritten.held == {}
