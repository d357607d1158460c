"""The relayed C-MOVEs in progress, seen by every acceptor process.

The router asks the upstream to move to the router's own AE with a message ID of its own;
the upstream's C-STOREs carry that ID as Move Originator Message ID, which is how an instance
finds its move. As Move Originator AE Title they carry the router's calling AE, or (some
upstreams, pynetdicom's among them) the upstream's own AE title, or nothing. An instance is
the move's only when it comes on an association from the move's upstream (its AE title, or
one of the destination's store_ae_titles, as the calling AE, which tls.ae_titles binds to
the upstream's certificate): another party's C-STORE, whatever originator and message ID it
names, is ordinary work for the routing rules, never a sub-operation of someone else's move.
The upstream opens associations of its own for them, and with several acceptors on one port
(`listen.acceptors`) the kernel may hand such an association to an acceptor other than the
one whose requester waits. So a move is a file, `<spool>/moves/<message id>`, holding the
tag of the acceptor that relays it (its pid, start time and boot: the spool outlives a
restart, where another process may get its pid, router/core/process_identity.py) and the
calling AE it presents upstream (`<tag> <AE>`; an older router's has a bare pid),
then a line each for the upstream's AE title, its name in destinations and its
store_ae_titles:

- made by `link(2)` of a written file, which fails when the name exists, so the message ID
  is unique among the moves of every acceptor and nobody reads a half-written entry;
- whichever acceptor receives an instance of it puts it into relay/ under the owner's tag
  (`relayed_move_name`), where the owner's move loop picks it up;
- a move that ended (finished, cancelled, its requester gone) leaves `closed-<message id>`
  for CLOSED_SECONDS, and an entry whose acceptor died is a move that is over: an instance
  that names either is refused (late, nobody waits for it), never taken as new work; the
  ID is taken again, once no other is free;
- while an instance of a move in progress arrives, the acceptor receiving it touches the
  move's entry (`heard`, at most once per HEARD_SECONDS per C-STORE), and the worker whose
  C-MOVE waits on the upstream watches its mtime (`ArrivalWatch`): the upstream says
  nothing on the C-MOVE's association while it sends an instance, and that silence is not
  the upstream's while the instance's data flows (README "Instances of several GB");
- a pass-through C-MOVE reserves an ID too, an entry naming no AE that no instance matches:
  the upstream's C-STOREs for it (to the router itself, say) are ordinary work, never a
  relayed move's, in progress or closed.

Cells behind a load balancer that share spool.shared_state_dir share this folder too
(`<shared>/moves`): the upstream's associations may reach any cell, which finds the move
here like another acceptor of one cell. An owner then names its cell (`<tag>@<cell>`), and
another cell's is alive while its heartbeat is (router/relay/move_owner.py); that cell's
instances go to it through `<shared>/move-instances` (router/relay/move_handover.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from router.core.errors import RouterError
from router.core.owned_names import process_alive
from router.core.process_identity import ProcessTag
from router.relay.move_owner import MoveOwner, OwnerLiveness, parse_owner

MESSAGE_IDS = 65535  # a message ID is a US; 0 is not used
# An upstream may go on sending well after a cancel; its instances are refused this long.
CLOSED_SECONDS = 3600.0
SWEEP_SECONDS = 60.0  # how often an acceptor removes expired closed-<id> files
# A move's arriving instance says so at most this often: the worker looks 4 times a second
# (router/dicom/silence_wait.py) and its timeout counts whole seconds.
HEARD_SECONDS = 1.0


class RegistryUnavailable(RouterError):
    """The registry's folder cannot be written (a shared volume gone or read-only for now):
    no move can be given a message ID, so none is relayed until it is back."""


@dataclass(frozen=True)
class MoveRelay:
    message_id: int
    originator_ae: str  # the calling AE the router presents to the upstream
    upstream_ae: str = ""  # the upstream's AE title
    destination: str = ""  # the upstream's name in destinations, for the operator
    store_aes: tuple[str, ...] = ()  # its store_ae_titles: other AEs it sends under

    def senders(self) -> tuple[str, ...]:
        """The calling AE titles this move's instances may come from."""
        return (self.upstream_ae, *self.store_aes) if self.upstream_ae else ()

    def sent(self, originator_ae: str | None, calling_ae: str) -> bool:
        """Whether an instance naming this move's message ID, with this Move Originator AE
        Title on an association from `calling_ae`, is this move's (AE titles arrive
        padded)."""
        # Only the upstream may add to its move: anyone can name the router as originator
        # and guess a message ID, but tls.ae_titles binds the calling AE to a certificate.
        return (calling_ae.strip() in self.senders()
                and self._names(originator_ae, calling_ae, allow_empty=True))

    def stray(self, originator_ae: str | None, calling_ae: str) -> bool:
        """Whether an instance names this move (its message ID and the router, or the
        sender itself, as Move Originator) but comes from an AE it is not taken from: most
        likely the upstream storing under an AE title store_ae_titles does not list."""
        return (bool(self.upstream_ae) and calling_ae.strip() not in self.senders()
                and self._names(originator_ae, calling_ae, allow_empty=False))

    def _names(self, originator_ae: str | None, calling_ae: str, allow_empty: bool) -> bool:
        originator = (originator_ae or "").strip()
        if not originator:
            return allow_empty
        return originator in (calling_ae.strip(), self.originator_ae, self.upstream_ae)


class MoveRegistry:
    def __init__(self, folder: Path, alive: Callable[[ProcessTag], bool] = process_alive,
                 message_ids: int = MESSAGE_IDS, cell: str | None = None) -> None:
        """`cell`: this cell's id when the folder is shared with other cells
        (router/relay/move_owner.py)."""
        self.folder = folder
        self._alive = OwnerLiveness(folder, cell, alive)
        self._ids = message_ids  # fewer in tests, to run out of them
        folder.mkdir(parents=True, exist_ok=True)
        # Acceptors start at different IDs, so that they seldom try the same one.
        self._next = random.randrange(message_ids)
        self._swept = -SWEEP_SECONDS
        self._unended: dict[int, bool] = {}  # message ID -> close (else release), to retry

    def open(self, originator_ae: str, upstream_ae: str = "", destination: str = "",
             store_aes: tuple[str, ...] = ()) -> MoveRelay:
        """Claim a message ID no move in progress has, in any acceptor, and none that closed
        within CLOSED_SECONDS while another is free (its late instances name it)."""
        self.tend()  # another cell takes this one's moves for alive from its first beat
        draft = self.folder / f".{os.getpid()}-{uuid.uuid4().hex}"
        try:
            draft.write_text("\n".join((f"{self._alive.me()} {originator_ae}", upstream_ae,
                                        destination, *store_aes)))
        except OSError as exc:
            raise self._unavailable(exc) from None
        try:
            for attempt in range(2 * self._ids):
                message_id = self._next % self._ids + 1
                self._next += 1
                if attempt < self._ids and self._recently_closed(message_id):
                    continue
                entry = self.folder / str(message_id)
                try:
                    os.link(draft, entry)
                except FileExistsError:
                    if self._owner(message_id) is not None:
                        continue
                    # Left by an acceptor that died: that move is over. Take the ID.
                    entry.unlink(missing_ok=True)
                    try:
                        os.link(draft, entry)
                    except FileExistsError:
                        continue  # another acceptor took it meanwhile
                return MoveRelay(message_id, originator_ae, upstream_ae, destination,
                                 store_aes)
            raise RuntimeError(f"{self._ids} relayed C-MOVEs in progress")
        except OSError as exc:  # FileExistsError is handled above: the folder went away
            raise self._unavailable(exc) from None
        finally:
            with contextlib.suppress(OSError):
                draft.unlink(missing_ok=True)

    def _unavailable(self, exc: OSError) -> RegistryUnavailable:
        return RegistryUnavailable(f"cannot register a C-MOVE in {self.folder}: "
                                   f"{exc.strerror or exc}")

    def reserve(self) -> MoveRelay:
        """A message ID for a pass-through C-MOVE: no relayed move takes it meanwhile, and no
        instance names it as a relayed move's. `release` it when the move ends."""
        return self.open("", "")

    def release(self, move: MoveRelay) -> None:
        """A pass-through move ended: its ID is free, and nothing is refused for it."""
        self._end(move.message_id, close=False)

    def close(self, move: MoveRelay) -> None:
        """The move ended: its late instances are refused for CLOSED_SECONDS."""
        self._end(move.message_id, close=True)

    def _end(self, message_id: int, close: bool) -> None:
        """End a move's entry; while the folder is away, again from `tend` until it is back:
        an entry left naming a live acceptor would be a move in progress for ever (its late
        instances taken for nobody, its upstream awaited)."""
        if not self._ended(message_id, close):
            self._unended[message_id] = close

    def _ended(self, message_id: int, close: bool) -> bool:
        """Whether the move's entry is ended, or none of this acceptor's to end."""
        if not self._mine(message_id):
            return True  # taken for over by another cell (silent too long), and reused since
        entry, closed = self.folder / str(message_id), self.folder / f"closed-{message_id}"
        try:
            if close:
                os.replace(entry, closed)
                os.utime(closed)  # closed now, however long it ran
            else:
                entry.unlink()
        except FileNotFoundError:
            return self.folder.is_dir()  # no entry: nothing to end; no folder: not yet
        except OSError:
            return False  # read-only for now
        return True

    def heard(self, message_id: int) -> None:
        """Data of an instance of this move arrived: its entry's mtime tells the worker that
        waits on the upstream (ArrivalWatch). A move that ended meanwhile has no entry."""
        with contextlib.suppress(OSError):
            os.utime(self.folder / str(message_id))

    def arriving(self, message_id: int | None, originator_ae: str | None,
                 calling_ae: str) -> ArrivingInstance | None:
        """A C-STORE whose data is arriving, when it is an instance of a move in progress
        (the same AE checks as the instance's taking, `owner`); None otherwise: another
        party's C-STORE naming the move never keeps it alive."""
        if self.owner(message_id, originator_ae, calling_ae) is None:
            return None
        assert message_id is not None
        return ArrivingInstance(self, int(message_id))

    def owner(self, message_id: int | None, originator_ae: str | None,
              calling_ae: str = "") -> MoveOwner | None:
        """The acceptor relaying the move an instance names, None when it names no move in
        progress."""
        found = self._find(message_id, originator_ae, calling_ae)
        return found[0] if found is not None and found[1] else None

    def closed(self, message_id: int | None, originator_ae: str | None,
               calling_ae: str = "") -> bool:
        """Whether an instance names a move that ended (or whose acceptor died)."""
        found = self._find(message_id, originator_ae, calling_ae)
        return found is not None and not found[1]

    def stray(self, message_id: int | None, originator_ae: str | None,
              calling_ae: str) -> MoveRelay | None:
        """The move in progress an instance names though it comes from an AE the move does
        not take instances from (MoveRelay.stray), for a warning; None otherwise."""
        if message_id is None or not 1 <= int(message_id) <= MESSAGE_IDS:
            return None
        entry = self._read(str(int(message_id)))
        if entry is None or not entry[1].stray(originator_ae, calling_ae):
            return None
        return entry[1] if self._alive(entry[0]) else None

    def awaits(self, calling_ae: str) -> bool:
        """Whether a move in progress, in any acceptor, takes instances from this calling AE:
        its upstream's store association may be silent while the upstream works."""
        calling = calling_ae.strip()
        try:
            names = os.listdir(self.folder)
        except OSError:
            return False  # the shared volume away for now: no move can be told to wait
        for name in names:
            if name.isdigit():
                entry = self._read(name)
                if (entry is not None and calling in entry[1].senders()
                        and self._alive(entry[0])):
                    return True
        return False

    def _find(self, message_id: int | None, originator_ae: str | None,
              calling_ae: str) -> tuple[MoveOwner, bool] | None:
        """(owner, whether it is in progress) of the move an instance names."""
        if message_id is None or not 1 <= int(message_id) <= MESSAGE_IDS:
            return None
        for name, in_progress in ((str(int(message_id)), True),
                                  (f"closed-{int(message_id)}", False)):
            entry = self._read(name)
            if entry is None or not entry[1].sent(originator_ae, calling_ae):
                continue
            if name.startswith("closed-") and self._expired(name):
                return None
            return entry[0], in_progress and self._alive(entry[0])
        return None

    def _owner(self, message_id: int) -> MoveOwner | None:
        entry = self._read(str(message_id))
        return entry[0] if entry is not None and self._alive(entry[0]) else None

    def _mine(self, message_id: int) -> bool:
        entry = self._read(str(message_id))
        return entry is None or entry[0] == self._alive.me()

    def _read(self, name: str) -> tuple[MoveOwner, MoveRelay] | None:
        with contextlib.suppress(OSError, ValueError):
            lines = (self.folder / name).read_text().split("\n")
            first, upstream_ae, destination, *store_aes = lines + [""] * (3 - len(lines))
            tag, _, originator_ae = first.partition(" ")
            owner = parse_owner(tag)
            if owner is None:
                return None
            return owner, MoveRelay(int(name.rpartition("-")[2]), originator_ae,
                                    upstream_ae, destination,
                                    tuple(ae for ae in store_aes if ae))
        return None

    def _recently_closed(self, message_id: int) -> bool:
        name = f"closed-{message_id}"
        return (self.folder / name).exists() and not self._expired(name)

    def _expired(self, name: str) -> bool:
        try:
            return time.time() - (self.folder / name).stat().st_mtime >= CLOSED_SECONDS
        except OSError:
            return True

    def tend(self) -> None:
        """From each acceptor's main loop (and each move's start): its heartbeat, for the
        other cells; once per SWEEP_SECONDS, the closed moves and heartbeats that expired."""
        self._alive.beat()
        for message_id, close in list(self._unended.items()):
            if self._ended(message_id, close):
                self._unended.pop(message_id, None)
        now = time.monotonic()
        if now - self._swept < SWEEP_SECONDS:
            return
        self._swept = now
        for path in self.folder.glob("closed-*"):
            if self._expired(path.name):
                path.unlink(missing_ok=True)
        self._alive.sweep()

    def relays(self, owner: MoveOwner, message_id: int) -> bool:
        """Whether that owner's move is in progress: its entry, and the owner alive."""
        entry = self._read(str(message_id))
        return entry is not None and entry[0] == owner and self._alive(owner)

    @property
    def me(self) -> MoveOwner:
        return self._alive.me()


@dataclass
class ArrivingInstance:
    """An instance of a relayed move in progress, arriving at an acceptor: its PDUs are the
    move's activity (MoveRegistry.heard), once per HEARD_SECONDS at most."""

    registry: MoveRegistry
    message_id: int
    _heard: float = -math.inf  # monotonic

    def data(self) -> None:
        now = time.monotonic()
        if now - self._heard >= HEARD_SECONDS:
            self._heard = now
            self.registry.heard(self.message_id)


class ArrivalWatch:
    """In the worker whose C-MOVE waits on the upstream: whether data of the move's
    instances arrived at an acceptor since the last look (the entry's mtime changed). By
    change, not age: the waiter counts the silence on its own monotonic clock, so a wall
    clock step neither ends nor prolongs the wait."""

    def __init__(self, folder: Path, message_id: int) -> None:
        self.path = folder / str(message_id)
        self._seen = self._stamp()

    def _stamp(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None  # the move ended (closed-<id>), or it was never relayed

    def __call__(self) -> bool:
        stamp = self._stamp()
        changed = stamp is not None and stamp != self._seen
        self._seen = stamp
        return changed
