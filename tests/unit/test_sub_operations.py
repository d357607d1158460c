"""router/relay/sub_operations.py: what a relayed C-GET or C-MOVE tells its requester."""

from __future__ import annotations

from router.core.messages import RelayResponse
from router.relay.exchange import Counts
from router.relay.sub_operations import SubOperations


def _answer(status: int, remaining: int = -1, completed: int = -1, failed: int = -1,
            warning: int = -1, final: bool = False) -> RelayResponse:
    return RelayResponse("r", status, final, remaining=remaining, completed=completed,
                         failed=failed, warning=warning)


def test_remaining_is_known_from_the_upstream_never_rises_and_ends_at_zero() -> None:
    subs = SubOperations()
    subs.delivered(0x0000)  # the first instance comes before the upstream's first count
    assert not subs.known
    subs.upstream(_answer(0xFF00, remaining=9, completed=1, failed=0, warning=0))
    seen = [subs.counts().remaining]
    for n in range(2, 11):
        subs.delivered(0x0000)  # delivered before the upstream's pending for it came
        seen.append(subs.counts().remaining)
        subs.upstream(_answer(0xFF00, remaining=10 - n, completed=n, failed=0, warning=0))
        seen.append(subs.counts().remaining)
    assert seen == sorted(seen, reverse=True) and seen[0] == 9 and seen[-1] == 0
    subs.upstream(_answer(0x0000, completed=10, failed=0, warning=0, final=True))
    assert subs.counts() == Counts(0, 10, 0, 0)
    assert subs.final_status(0x0000, cancelled=False) == 0x0000


def test_the_upstreams_own_failures_and_the_targets_warnings_are_counted() -> None:
    subs = SubOperations()
    for status in (0x0000, 0xB007, 0x0000):
        subs.delivered(status)
    subs.upstream(_answer(0xB000, completed=3, failed=2, warning=0, final=True))
    assert subs.counts() == Counts(0, 2, 2, 1)
    assert subs.final_status(0xB000, cancelled=False) == 0xB000
    assert subs.final_status(0x0000, cancelled=False) == 0xB000


def test_every_sub_operation_failed_is_a702_and_a_cancel_says_what_was_not_done() -> None:
    subs = SubOperations()
    subs.delivered(None)
    subs.delivered(0xA700)
    assert subs.final_status(0x0000, cancelled=False) == 0xA702
    assert subs.final_status(0x0000, cancelled=True) == 0xFE00
    assert subs.final_status(0xC000, cancelled=False) == 0xC000  # the upstream's own failure
    cancelled = SubOperations()
    cancelled.upstream(_answer(0xFF00, remaining=8, completed=2, failed=0, warning=0))
    cancelled.delivered(0x0000)
    assert cancelled.counts() == Counts(9, 1, 0, 0)  # the second one never delivered



def test_what_the_upstream_reported_sent_and_never_arrived_counts_as_failed() -> None:
    """A relayed C-MOVE whose upstream stored under another AE title: nothing reached the
    move, the upstream says 3 completed: 0xA702 with failed 3, never Success 0/0; some
    arrived: 0xB000."""
    none = SubOperations()
    none.upstream(_answer(0x0000, completed=3, failed=0, warning=0, final=True))
    assert none.count_lost() == 3
    assert none.counts() == Counts(0, 0, 3, 0)
    assert none.final_status(0x0000, cancelled=False) == 0xA702
    some = SubOperations()
    some.upstream(_answer(0xFF00, remaining=2, completed=1, failed=0, warning=0))
    some.delivered(0x0000)
    some.upstream(_answer(0x0000, completed=3, failed=0, warning=0, final=True))
    assert some.count_lost() == 2
    assert some.counts() == Counts(0, 1, 2, 0)
    assert some.final_status(0x0000, cancelled=False) == 0xB000
    every = SubOperations()
    every.upstream(_answer(0x0000, completed=2, failed=1, warning=0, final=True))
    every.delivered(0x0000)
    every.delivered(0xB007)
    assert every.count_lost() == 0
    assert every.final_status(0x0000, cancelled=False) == 0xB000  # the upstream's failure
