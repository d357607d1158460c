"""Storage commitment results the router took from the upstream but could not yet hand to
their requester (its SCP down, or silent): kept on the spool volume and sent again until it
takes them. Orthanc and many archives send a result once; answered with a failure, they log
it and the requester never hears, so the router keeps it as it keeps an instance.

Each is `<spool>/commitments/<transaction uid>.result` (JSON, fsync'd). Any acceptor process
may retry it: the one holding its lock (flock) leases it for the send (`first_try_until`),
sends it without the lock, and ends it (deleted when delivered) under the lock again. A
result kept while its first try still waits for the requester carries that try's deadline
(`first_try_until`) too: nobody sends it before, and the try, when it ends, removes it
(taken) or makes it due, under the same lock.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from router.core.durable_files import fsync_path, write_atomically
from router.core.messages import RelayRequest

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 2.0  # then doubling: a modality restarting its SCP hears within seconds
MAX_RETRY_SECONDS = 300.0
GIVE_UP_SECONDS = 24 * 3600.0  # as long as a pending commitment is remembered
# How often the supervisor counts them for its gauge and /status: a listing of commitments/,
# on a shared folder (NFS) a round trip to the server, and its main loop turns twice a second.
COUNT_SECONDS = 5.0


@dataclass(frozen=True)
class KeptResult:
    """One undelivered result: the N-EVENT-REPORT as the upstream sent it, and its retries."""

    transaction_uid: str
    requester_ae: str
    event_type_id: int
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae: str  # the upstream that reported, for the log
    dataset: str  # base64 of the Event Information as received
    kept_at: float  # wall-clock time the router took it
    attempts: int = 0
    next_at: float = 0.0
    reason: str = ""  # why the last attempt failed
    # Wall-clock time until which the first try may still be answered: not sent again before
    # (a slow requester would get it twice). Past it, an acceptor that died mid-try is
    # assumed, and the courier sends it.
    first_try_until: float = 0.0

    def request(self, request_id: str) -> RelayRequest:
        """The N-EVENT-REPORT to the requester (a known AE), as first relayed."""
        return RelayRequest(
            request_id=request_id, command="N-EVENT-REPORT", upstreams=[self.requester_ae],
            calling_ae=self.calling_ae, called_ae="", peer_address="",
            sop_class_uid="1.2.840.10008.1.20.1", transfer_syntax_uid=self.transfer_syntax_uid,
            sop_instance_uid=self.sop_instance_uid, event_type_id=self.event_type_id,
            has_dataset=True, to_known_ae=True)

    def payload(self) -> bytes:
        return base64.b64decode(self.dataset)

    def failed(self, now: float, reason: str) -> KeptResult:
        """The next attempt after one more failure: FIRST_RETRY_SECONDS, doubling."""
        delay = min(FIRST_RETRY_SECONDS * 2 ** self.attempts, MAX_RETRY_SECONDS)
        return replace(self, attempts=self.attempts + 1, next_at=now + delay, reason=reason)

    def expired(self, now: float) -> bool:
        return now - self.kept_at >= GIVE_UP_SECONDS

    def due(self, now: float) -> bool:
        return self.next_at <= now and self.first_try_until <= now

    def same(self, other: KeptResult) -> bool:
        """The same report from the upstream (not a later one for the same transaction)."""
        return (self.kept_at, self.dataset) == (other.kept_at, other.dataset)

    def after(self, earlier: KeptResult | None) -> KeptResult:
        """This result in place of an earlier one for its transaction: sent once the
        earlier's first try, if it still waits, has ended (never the earlier after it)."""
        if earlier is None or earlier.first_try_until <= self.first_try_until:
            return self
        return replace(self, first_try_until=earlier.first_try_until)


def kept_result(request: RelayRequest, transaction_uid: str, requester_ae: str,
                payload: bytes, now: float, reason: str, first_try_until: float = 0.0
                ) -> KeptResult:
    """A result whose first delivery failed, retried FIRST_RETRY_SECONDS from now; or,
    with first_try_until, one whose first try still waits until then."""
    return KeptResult(transaction_uid, requester_ae, request.event_type_id,
                      request.sop_instance_uid, request.transfer_syntax_uid, request.calling_ae,
                      base64.b64encode(payload).decode("ascii"), now,
                      first_try_until=first_try_until).failed(now, reason)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float)}


def _parsed(body: bytes) -> KeptResult:
    """The KeptResult in a file's bytes; ValueError or TypeError if they are not one (a
    field of the wrong type would fail later, in the retry thread, on every pass)."""
    result = KeptResult(**json.loads(body))
    for f in fields(KeptResult):
        value = getattr(result, f.name)
        if isinstance(value, bool) or not isinstance(value, _FIELD_TYPES[str(f.type)]):
            raise TypeError(f"{f.name} is {type(value).__name__}, not {f.type}")
    return result


class KeptResults:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._count = 0
        self._counted_at = float("-inf")  # monotonic

    def count(self) -> int:
        """How many are kept now (the supervisor's gauge and /status: one reader, whatever
        the number of acceptors that send them)."""
        try:
            return sum(1 for _ in self.folder.glob("*.result"))
        except OSError:
            return 0

    def counted(self, now: float) -> int:
        """count(), listed again only once COUNT_SECONDS have passed since the last listing
        (`now`: monotonic); the number then, in between."""
        if now - self._counted_at >= COUNT_SECONDS:
            self._counted_at, self._count = now, self.count()
        return self._count

    def _path(self, transaction_uid: str) -> Path | None:
        if not re.fullmatch(r"[0-9.]{1,64}", transaction_uid):
            return None  # a hostile "UID" never becomes a file name
        return self.folder / f"{transaction_uid}.result"

    def keep(self, result: KeptResult) -> bool:
        """Write it durably, in place of an earlier result kept for its transaction, under
        that one's lock: a courier sending the earlier finishes first, and then finds this
        one, not nothing. False when its Transaction UID cannot be a file name."""
        path = self._path(result.transaction_uid)
        if path is None:
            return False
        self._update(path, result.after, create=True)
        return True

    def peek(self, transaction_uid: str) -> KeptResult | None:
        """The result kept for a transaction, read without its lock; None when none is."""
        path = self._path(transaction_uid)
        try:
            return None if path is None else _parsed(path.read_bytes())
        except (OSError, ValueError, TypeError):
            return None

    @staticmethod
    def _write(path: Path, result: KeptResult) -> None:
        # (The temporary name is random, not the pid's: cells sharing the folder may have
        # the same pids.)
        write_atomically(path, json.dumps(asdict(result)).encode())
        with contextlib.suppress(OSError):
            fsync_path(path.parent, directory=True)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[KeptResult | None]:
        """The result in path while this process holds its lock; None when another process
        holds it, or it was delivered meanwhile, or it cannot be read."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    yield None  # replaced or delivered since it was opened
                    return
            except (BlockingIOError, FileNotFoundError):
                yield None
                return
            try:
                with open(fd, "rb", closefd=False) as stream:
                    result = _parsed(stream.read())
            except (ValueError, TypeError) as exc:
                # Read before the yield: the caller's own exception is not "cannot be read",
                # and one damaged file must not stop the retries of those after it.
                log.error("storage commitment result %s cannot be read (%s): removed",
                          path.name, exc)
                path.unlink(missing_ok=True)
                yield None
                return
            yield result
        finally:
            os.close(fd)

    def due(self, now: float) -> Generator[KeptResult, None, None]:
        """Each result whose retry is due, locked while the caller handles it: the caller
        ends each with `delivered`, `retry_later` or `give_up` before asking for the next."""
        for path in sorted(self.folder.glob("*.result")):
            with self._locked(path) as result:
                if result is not None and result.due(now):
                    yield result

    def delivered(self, result: KeptResult) -> None:
        path = self._path(result.transaction_uid)
        if path is not None:
            path.unlink(missing_ok=True)

    give_up = delivered

    def retry_later(self, result: KeptResult) -> None:
        path = self._path(result.transaction_uid)
        if path is not None:
            self._write(path, result)

    def first_try_ended(self, kept: KeptResult, taken: bool, now: float, reason: str) -> None:
        """The first try of `kept` ended after it was kept: taken by the requester, the file
        goes; not taken, it is due FIRST_RETRY_SECONDS from now. Under the file's lock,
        waiting for it: a courier sending it (its try's time was up) goes first."""
        self._try_ended(kept, taken, lambda current: replace(
            current, first_try_until=0.0, reason=reason, next_at=now + FIRST_RETRY_SECONDS))

    def lease(self, result: KeptResult, until: float) -> KeptResult:
        """`result`, locked by the caller (from `due`), taken for a send until `until`: the
        courier sends it after leaving the lock, so that a later report is kept at once,
        never after a delivery that may last request_timeout (the upstream waits for it).
        Nobody sends it again before `until`; a later report kept meanwhile waits for the
        send's end (`sent`), as for a first try."""
        leased = replace(result, first_try_until=until)
        self.retry_later(leased)
        return leased

    def sent(self, leased: KeptResult, taken: bool, now: float, reason: str) -> None:
        """The send of a `lease`d result ended: taken, the file goes; not taken, it is due
        again after its back-off."""
        self._try_ended(leased, taken, lambda current: replace(
            current.failed(now, reason), first_try_until=0.0))

    def _try_ended(self, kept: KeptResult, taken: bool,
                   untaken: Callable[[KeptResult], KeptResult]) -> None:
        def ended(current: KeptResult | None) -> KeptResult | None:
            if current is None or not current.same(kept):
                # A later report took its place, and waited for this try: it may go now.
                if current is None or current.first_try_until != kept.first_try_until:
                    return current
                return replace(current, first_try_until=0.0)
            return None if taken else untaken(current)

        path = self._path(kept.transaction_uid)
        if path is not None:
            self._update(path, ended)

    def _update(self, path: Path, change: Callable[[KeptResult | None], KeptResult | None],
                create: bool = False) -> None:
        """Replace the result in path with change(it) (None: remove it), holding its lock.
        None kept there (delivered meanwhile): change(None), if `create`, else nothing."""
        while True:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                created = change(None) if create else None
                if created is not None:
                    self._write(path, created)
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    replaced = os.fstat(fd).st_ino != os.stat(path).st_ino
                except FileNotFoundError:
                    replaced = True
                if replaced:
                    continue  # rewritten or removed while this waited for the lock: again
                with open(fd, "rb", closefd=False) as stream:
                    body = stream.read()
                try:
                    current: KeptResult | None = _parsed(body)
                except (ValueError, TypeError):
                    if not create:
                        raise
                    current = None  # damaged: the new one takes its place
                changed = change(current)
                if changed is None:
                    path.unlink(missing_ok=True)
                elif changed != current:
                    self._write(path, changed)
                return
            finally:
                os.close(fd)
