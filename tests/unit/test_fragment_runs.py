"""Adjacent dataset fragments of one read come as one run, ending at a message's last."""

from __future__ import annotations

from router.acceptor.fragment_runs import fragment_runs
from router.dicom.engine import CEchoRQ, CommandReceived, DataFragment, ReleaseRequested

COMMAND = CommandReceived(1, CEchoRQ(1))


def fragment(data: bytes, last: bool = False) -> DataFragment:
    return DataFragment(1, data, last)


def test_fragments_between_other_events_come_as_runs_in_order() -> None:
    a, b, c = fragment(b"a"), fragment(b"b"), fragment(b"c", last=True)
    assert list(fragment_runs([COMMAND, a, b, c, ReleaseRequested()])) == [
        COMMAND, [a, b, c], ReleaseRequested()]


def test_a_run_ends_at_the_last_fragment_of_its_message() -> None:
    first, second = fragment(b"1", last=True), fragment(b"2")
    assert list(fragment_runs([first, second])) == [[first], [second]]


def test_a_run_cut_by_the_end_of_the_read_is_handed_on() -> None:
    a = fragment(b"a")
    assert list(fragment_runs([COMMAND, a])) == [COMMAND, [a]]
    assert list(fragment_runs([])) == []
