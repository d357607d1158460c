"""The sub-operation counts a relayed C-GET or relay-mode C-MOVE reports to its requester
(PS3.4 C.4.2.1.5, C.4.3.1.4), and its final status.

Two parties do sub-operations: the upstream, whose own failures and warnings (an instance it
could not send, say) never reach the router, and the router, which delivers what did reach
it (to the requester for a C-GET, to the move destination for a C-MOVE). The requester hears
the sum: completed and warning as the router's deliveries went, failed and warning plus the
upstream's own. Remaining is what the upstream said it would do, less what is done on either
side: it is known once the upstream gave its counts, never goes back up, and reaches 0 at
the end unless the request was cancelled (then it is what was not delivered). A relayed
C-MOVE's instances come on associations of the upstream's own: one it reported sent that
never reached the move (sent under an AE title the move does not take, say) is counted
failed at the final (`lost`), never left out of a Success.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.core.dimse_status import Status, is_delivered, is_warning
from router.core.messages import RelayResponse
from router.relay.exchange import Counts

CANCELLED = Status.CANCEL
WARNING = Status.SUB_OPERATIONS_WITH_FAILURES
ALL_FAILED = Status.UNABLE_TO_PERFORM_SUB_OPERATIONS


@dataclass
class SubOperations:
    completed: int = 0  # the router's deliveries, by their outcome
    failed: int = 0
    warning: int = 0
    upstream_failed: int = 0  # the upstream's own, from its latest answer
    upstream_warning: int = 0
    upstream_completed: int = 0  # what the upstream says it sent, from its latest answer
    lost: int = 0  # of those, what never reached the router (set at a C-MOVE's final)
    total: int | None = None  # how many the upstream does in all, once it said
    _reported: int | None = None  # the last remaining sent: it never goes back up

    def delivered(self, status: int | None) -> None:
        """One delivery's outcome: its C-STORE status, None when it failed without one."""
        if status is not None and is_warning(status):
            self.warning += 1
        elif status is not None and is_delivered(status):
            self.completed += 1
        else:
            self.failed += 1

    def upstream(self, answer: RelayResponse) -> None:
        """The counts in one of the upstream's answers (pending or final)."""
        self.upstream_failed = max(answer.failed, self.upstream_failed)
        self.upstream_warning = max(answer.warning, self.upstream_warning)
        self.upstream_completed = max(answer.completed, self.upstream_completed)
        if answer.remaining >= 0 and answer.completed >= 0:
            self.total = (answer.remaining + answer.completed + max(answer.failed, 0)
                          + max(answer.warning, 0))

    def count_lost(self) -> int:
        """At the final, once what was sent before it arrived: the instances the upstream
        reported sent that the router never received count as failed. How many."""
        self.lost = max(0, self.upstream_completed
                        - (self.completed + self.failed + self.warning))
        return self.lost

    @property
    def known(self) -> bool:
        """Whether the remaining count is known (the upstream gave its counts)."""
        return self.total is not None

    def counts(self) -> Counts:
        failed = self.failed + self.lost + self.upstream_failed
        done = self.completed + failed + self.warning + self.upstream_warning
        remaining = max(0, (self.total or 0) - done)
        if self._reported is not None:
            remaining = min(remaining, self._reported)
        self._reported = remaining
        return Counts(remaining, self.completed, failed, self.warning + self.upstream_warning)

    def final_status(self, upstream_status: int, cancelled: bool) -> int:
        """PS3.4 C.4.2.1.5: Cancel; the upstream's own failure; otherwise Success, Warning
        (0xB000: some failed or had warnings) or 0xA702 (every one failed)."""
        if cancelled or upstream_status == CANCELLED:
            return CANCELLED
        if upstream_status not in (Status.SUCCESS, WARNING, ALL_FAILED):
            return upstream_status  # the upstream could not do the request at all
        failed = self.failed + self.lost + self.upstream_failed
        warning = self.warning + self.upstream_warning
        if not failed and not warning:
            return upstream_status  # Success; or a Warning whose counts the upstream kept
        if not self.completed and not warning:
            return ALL_FAILED
        return WARNING
