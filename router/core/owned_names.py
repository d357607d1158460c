"""Names of files that say which process writes them, so that a dead one's can be found.

An acceptor receives into incoming/<tag>-<random>.dcm, a worker prepares its copies of jobs
in relay/<tag>-<job>.<random>.dcm, an acceptor appends to journal/<tag>-<token>-<n>.log. The
tag is the writer's pid, start time and boot (router/core/process_identity.py): a pid alone
may be another process's by now. The broker looks once a second (router/broker/orphans.py)
and deletes the files, or reads the journal segments, of writers that are gone, without
waiting for the router's next start.

The instances of a relayed C-GET or C-MOVE wait in relay/ for the acceptor that passes them
on to the requester, so their names carry that acceptor's tag (its reader's, for a C-GET's,
which a worker writes, and whichever acceptor received it for a C-MOVE's):
relay/<tag>-<request>-<n>.dcm and relay/<tag>-move-<id>-<random>.dcm. Once that acceptor is
gone nobody will pass them on.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from router.core.process_identity import ProcessTag, own_tag, parse_tag, running


def incoming_name() -> str:
    """A name for a file received into incoming/, after the receiving process."""
    return f"{own_tag()}-{uuid.uuid4().hex}.dcm"


def relay_copy_name(job_id: str) -> str:
    """A name for a worker's copy of a job in relay/ (morphed, de-identified, transcoded)."""
    return f"{own_tag()}-{job_id}.{uuid.uuid4().hex[:8]}.dcm"


def relay_request_id() -> str:
    """A relayed request's id, after the acceptor that relays it: its C-GET's instances are
    named after it (`<id>-<n>.dcm`, workers/relay.py)."""
    return f"{own_tag()}-{uuid.uuid4().hex}"


def relayed_get_name(request_id: str, number: int) -> str:
    """The name in relay/ of a relayed C-GET's `number`th instance (a worker moves it there)."""
    return f"{request_id}-{number}.dcm"


def relayed_get_files(relay: Path, request_id: str) -> list[Path]:
    """A relayed C-GET's instances still in relay/ (the request id is digits, hex and '-')."""
    return list(relay.glob(f"{request_id}-*.dcm"))


def relayed_move_name(owner: ProcessTag | str, message_id: int) -> str:
    """A name in relay/ for an instance of a C-MOVE that the acceptor `owner` relays
    (whichever acceptor received it: router/relay/move_registry.py); in the shared
    move-instances/, `owner` names its cell too (router/relay/move_owner.py)."""
    return f"{owner}-move-{message_id}-{uuid.uuid4().hex}.dcm"


def relayed_move_files(relay: Path, message_id: int) -> list[Path]:
    """The instances in relay/ of a C-MOVE this acceptor relays."""
    prefix = f"{own_tag()}-move-{message_id}-"
    with os.scandir(relay) as entries:  # no glob: a move's loop looks often
        return [Path(e.path) for e in entries if e.name.startswith(prefix)]


def unlink_all(paths: list[Path]) -> int:
    """Delete these files (a relayed retrieve's leftovers); how many there were."""
    for path in paths:
        path.unlink(missing_ok=True)
    return len(paths)


def writer_of(name: str) -> ProcessTag | None:
    """The writer a file's name starts with: an incoming/ file, a relay copy, a relayed
    retrieve's instance or a journal segment (or a relayed request's id). None for a name
    this router did not make so (a temporary file); a bare pid for an older version's."""
    return parse_tag(name.split("-", 1)[0])


def writer_pid(name: str) -> int | None:
    """The pid of writer_of(name), for messages."""
    writer = writer_of(name)
    return writer.pid if writer is not None else None


def process_alive(writer: ProcessTag) -> bool:
    """Whether that writer still runs: the process with its pid is the one that wrote."""
    return running(writer)


def unlink_owned_by_dead(folder: Path, alive: Callable[[ProcessTag], bool]) -> int:
    """Delete the files in `folder` whose writer is gone (`alive(writer)` false); how many."""
    count = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    verdicts: dict[ProcessTag, bool] = {}  # one look per writer, however many files
    for name in names:
        writer = writer_of(name)
        if writer is None:
            continue
        if writer not in verdicts:
            verdicts[writer] = alive(writer)
        if not verdicts[writer]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
                count += 1
    return count
