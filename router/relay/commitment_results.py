"""Storage commitment results the router took from the upstream but could not yet hand to
their requester (its SCP down, or silent): kept on the spool volume and sent again until it
takes them. Orthanc and many archives send a result once; answered with a failure, they log
it and the requester never hears, so the router keeps it as it keeps an instance.

Each is `<spool>/commitments/<transaction uid>.result` (JSON, fsync'd). Any acceptor process
may retry it: the one holding its lock (flock) sends it, and the one that delivered it
deletes it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from router.core.durable_files import fsync_path, write_atomically
from router.core.messages import RelayRequest

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 2.0  # then doubling: a modality restarting its SCP hears within seconds
MAX_RETRY_SECONDS = 300.0
GIVE_UP_SECONDS = 24 * 3600.0  # as long as a pending commitment is remembered


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


def kept_result(request: RelayRequest, transaction_uid: str, requester_ae: str,
                payload: bytes, now: float, reason: str) -> KeptResult:
    """A result whose first delivery failed, retried FIRST_RETRY_SECONDS from now."""
    return KeptResult(transaction_uid, requester_ae, request.event_type_id,
                      request.sop_instance_uid, request.transfer_syntax_uid, request.calling_ae,
                      base64.b64encode(payload).decode("ascii"), now).failed(now, reason)


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

    def count(self) -> int:
        """How many are kept now (the supervisor's gauge and /status: one reader, whatever
        the number of acceptors that send them)."""
        try:
            return sum(1 for _ in self.folder.glob("*.result"))
        except OSError:
            return 0

    def _path(self, transaction_uid: str) -> Path | None:
        if not re.fullmatch(r"[0-9.]{1,64}", transaction_uid):
            return None  # a hostile "UID" never becomes a file name
        return self.folder / f"{transaction_uid}.result"

    def keep(self, result: KeptResult) -> bool:
        """Write it durably; False when its Transaction UID cannot be a file name."""
        path = self._path(result.transaction_uid)
        if path is None:
            return False
        self._write(path, result)
        return True

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

    def due(self, now: float) -> Iterator[KeptResult]:
        """Each result whose retry is due, locked while the caller handles it: the caller
        ends each with `delivered`, `retry_later` or `give_up` before asking for the next."""
        for path in sorted(self.folder.glob("*.result")):
            with self._locked(path) as result:
                if result is not None and result.next_at <= now:
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
