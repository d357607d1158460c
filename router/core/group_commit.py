"""Group commit: threads that each need a durable record share one sync instead of paying
for their own (leader/follower).

A committer stages its record under the lock, which puts it in the open batch. The first
waiter that finds no sync running becomes the leader: it closes the open batch and syncs it,
outside the lock, for everyone in it; records staged meanwhile gather in the next batch, whose
leader is the first of them to wake. Nobody returns before the sync covering its record has
completed, and a failed sync fails exactly the commits of its batch. No I/O here: the caller
supplies `close` (under the lock: what the batch must sync) and `sync` (outside it: do it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

Work = TypeVar("Work")


@dataclass(eq=False)
class _Batch:
    commits: int = 0
    settled: bool = False
    error: BaseException | None = None


@dataclass(frozen=True)
class Ticket:
    """A staged record's place in a batch (GroupCommit.stage -> GroupCommit.wait)."""

    batch: _Batch


class GroupCommit(Generic[Work]):
    def __init__(self, close: Callable[[], Work], sync: Callable[[Work], None]) -> None:
        self._close, self._sync = close, sync
        self._cond = threading.Condition(threading.Lock())
        self._open = _Batch()
        self._syncing = False
        self.commits = 0  # read-outs for metrics and tests: commits made durable ...
        self.syncs = 0  # ... and the shared syncs that did it

    def commit(self, stage: Callable[[], None]) -> None:
        """Run `stage` (append the record) under the lock, then return once a sync that
        started after it has completed; raise OSError if that sync failed."""
        self.wait(self.stage(stage))

    def stage(self, stage: Callable[[], None]) -> Ticket:
        """The first half of commit(): the record is in the open batch, not yet durable. The
        caller must wait() for the ticket before it relies on the record (or undo it)."""
        with self._cond:
            stage()  # if it raises, nothing joined a batch
            batch = self._open
            batch.commits += 1
            return Ticket(batch)

    def locked(self, work: Callable[[], None]) -> None:
        """Run `work` under the lock, where `close` runs: housekeeping of what it closes."""
        with self._cond:
            work()

    def wait(self, ticket: Ticket) -> None:
        """Return once the batch holding the ticket's record is durable; lead its sync if
        nobody is syncing. Raise OSError if that sync failed."""
        batch = ticket.batch
        with self._cond:
            while not batch.settled:
                if self._syncing:
                    self._cond.wait()
                else:
                    self._lead()  # closes the open batch, or finds ours closed and settled
        if batch.error is not None:
            raise _failure(batch.error)

    def _lead(self) -> None:
        """Sync the open batch for all its commits. Called and returns with the lock held."""
        batch, self._open = self._open, _Batch()
        self._syncing = True
        error: BaseException | None = None
        try:
            work = self._close()
            self._cond.release()
            try:
                self._sync(work)
            except BaseException as exc:  # every waiter of the batch must hear of it
                error = exc
            finally:
                self._cond.acquire()
        except BaseException as exc:  # close() failed: the batch is not durable
            error = exc
        batch.error, batch.settled = error, True
        self._syncing = False
        self.syncs += 1
        if error is None:
            self.commits += batch.commits
        self._cond.notify_all()


def _failure(error: BaseException) -> OSError:
    """A fresh exception per waiter (one object raised in several threads would share a
    traceback); the errno is kept, so a full disk still reads as ENOSPC."""
    if isinstance(error, OSError):
        failure = OSError(error.errno, f"group commit failed: {error.strerror or error}")
    else:
        failure = OSError(f"group commit failed: {error!r}")
    failure.__cause__ = error
    return failure
