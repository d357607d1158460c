"""C-MOVE in relay mode: the upstream sends to the router, the router delivers to the target."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.core.config import DicomDestination, RouterConfig, SpoolConfig
from router.core.dimse_status import Status, relay_failure_status
from router.core.errors import DeliveryError, DimseRefusal, OutOfResources
from router.core.log_safety import RepeatLimiter
from router.core.messages import JobHeader, RelayRequest, RelayResponse
from router.core.owned_names import relayed_move_files, relayed_move_name, unlink_all
from router.core.spool import Spool
from router.dicom.dataset_file import DatasetFileError, read_dataset_file
from router.relay.call import RelayCall, RelayTimeout
from router.relay.exchange import Counts, Exchange, RequesterGone
from router.relay.move_handover import HandedInstances
from router.relay.move_owner import cell_id
from router.relay.move_registry import SWEEP_SECONDS, MoveRegistry, MoveRelay
from router.relay.move_senders import MoveSenders
from router.relay.move_targets import (
    MOVE_DESTINATION_TRANSFORMS,
    move_target,
    relaying_upstream,
    transforming_destinations,
)
from router.relay.sub_operations import SubOperations

log = logging.getLogger("router.relay.server")  # the name these messages always had

MOVE_DESTINATION_UNKNOWN = Status.MOVE_DESTINATION_UNKNOWN
# An instance may still be on its way into relay/ when its move ends (another acceptor
# received it as the upstream's final answer travelled): a second look this much later.
LATE_CLEAR_SECONDS = 10.0
# A sub-operation that failed for now is tried again after these, doubling, up to the max.
RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 2.0
# A stray instance (another calling AE naming a move) is logged once per AE and move a minute.
STRAY_WARNING_SECONDS = 60.0


class MoveClosed(DimseRefusal):
    """An instance of a relayed C-MOVE that ended (finished, cancelled, its requester gone):
    late, nobody waits for it, and it is no new work for the routing rules either."""


class RelayedMoves:
    """The relayed C-MOVEs in progress: each one's upstream call and its deliveries."""

    def __init__(self, spool: Spool, settings: SpoolConfig) -> None:
        self.spool = spool
        # Cells that share state share their moves: the upstream's instances may reach
        # any of them (docs/scale-out.md "State the cells share").
        shared = settings.shared_state_dir is not None
        self.moves = MoveRegistry(settings.state_folder("moves"),
                                  cell=cell_id(spool.root) if shared else None)
        self.handed = (HandedInstances(settings.state_folder("move-instances"),
                                       self.moves.relays) if shared else None)
        self.senders = MoveSenders()  # moves to one destination share its association
        self._strays = RepeatLimiter(STRAY_WARNING_SECONDS)
        self._swept = -SWEEP_SECONDS

    def tend(self) -> None:
        """From the acceptor's main loop: the registry's heartbeat and sweeps, and the
        handed instances nobody will read."""
        now = time.monotonic()
        with contextlib.suppress(OSError):  # the shared volume away for now: next turn
            self.moves.tend()
            if self.handed is not None and now - self._swept >= SWEEP_SECONDS:
                self._swept = now
                self.handed.sweep()

    def relay(self, exchange: Exchange, request: RelayRequest, config: RouterConfig,
              call_upstream: Callable[[RelayRequest], RelayCall]) -> None:
        target = move_target(config, request.move_destination)
        if target is None:
            log.warning("C-MOVE to %r refused: not among known_aes or destinations",
                        request.move_destination)
            exchange.final(MOVE_DESTINATION_UNKNOWN,
                           f"move destination {request.move_destination} unknown")
            return
        transforming = transforming_destinations(config, request.move_destination)
        if transforming:
            log.warning("C-MOVE to %r refused: destination %s de-identifies or morphs what it "
                        "gets, which a relayed C-MOVE cannot do", request.move_destination,
                        ", ".join(transforming))
            exchange.final(MOVE_DESTINATION_TRANSFORMS,
                           f"{request.move_destination} transforms what it gets; a relayed "
                           "C-MOVE cannot")
            return
        upstream = config.destinations[request.upstreams[0]]
        assert isinstance(upstream, DicomDestination)
        move = self.moves.open(upstream.calling_ae or config.ae_title, upstream.ae_title,
                               request.upstreams[0], tuple(upstream.store_ae_titles))
        relayed = RelayRequest(**{**request.__dict__, "move_destination": config.ae_title,
                                  "move_message_id": move.message_id,
                                  "upstreams": request.upstreams[:1]})
        # PS3.7 9.1.1.1: the sub-operations name the requester's C-MOVE, as they would
        # coming straight from the upstream.
        originator = (exchange.link.facts.calling_ae, int(exchange.msg.MessageID))
        tls_key = (f"known_aes.{target[0]}.tls" if request.move_destination in config.known_aes
                   else "")
        with self.senders.use(target[0], target[1], config.ae_title, tls_key) as (sender, lock):
            delivery = Delivery(exchange, move, sender, self.spool.relay, originator,
                                tuple(target[1].transfer_syntaxes), lock,
                                config.request_timeout, self._handed_files)
            call = call_upstream(relayed)
            try:
                _move_loop(call, delivery, self.tend)
            except RelayTimeout as exc:
                status = relay_failure_status("C-MOVE")
                log.warning("relayed C-MOVE: %s (request_timeout); the requester gets 0x%04X",
                            exc, status)
                exchange.final(status, str(exc), delivery.counts.counts())
            finally:
                call.close()
                self.moves.close(move)
                self.clear(move.message_id)
                # An instance another acceptor was putting into relay/ as the move closed:
                timer = threading.Timer(LATE_CLEAR_SECONDS, self.clear, (move.message_id,))
                timer.daemon = True
                timer.start()

    def pass_through(self, request: RelayRequest, run: Callable[[RelayRequest], object]
                     ) -> None:
        """A C-MOVE the upstream does itself, under a message ID of the registry's: the
        upstream's C-STOREs name it, and a relayed move's (closed or in progress) never
        shares it, so none of them is taken or refused as that move's."""
        move = self.moves.reserve()
        try:
            run(RelayRequest(**{**request.__dict__, "move_message_id": move.message_id}))
        finally:
            self.moves.release(move)

    def clear(self, message_id: int) -> None:
        """A move's instances left in relay/ when it ended (cancel, failure): nobody passes
        them on."""
        left = unlink_all(relayed_move_files(self.spool.relay, message_id)
                          + self._handed_files(message_id))
        if left:
            log.warning("removed %d instance(s) of relayed C-MOVE %d from relay/%s that "
                        "were never delivered", left, message_id,
                        "" if self.handed is None else " and the shared move-instances/")

    def take_instance(self, originator_message_id: int | None, originator_ae: str | None,
                      calling_ae: str, source: Path, config: RouterConfig | None = None
                      ) -> bool:
        """From the C-STORE handler: an instance of a relayed C-MOVE goes to its move, which
        this acceptor or another one relays (router/relay/move_registry.py); MoveClosed when
        the move it names has ended."""
        owner = self.moves.owner(originator_message_id, originator_ae, calling_ae)
        if owner is None:
            if self.moves.closed(originator_message_id, originator_ae, calling_ae):
                raise MoveClosed(f"relayed C-MOVE {originator_message_id} has ended; this "
                                 f"instance from {calling_ae.strip()} came too late")
            if config is not None:
                self._refuse_while_away(config, originator_message_id, originator_ae,
                                        calling_ae)
            self._warn_stray(originator_message_id, originator_ae, calling_ae)
            if config is not None:
                self._warn_other_cell(config, originator_message_id, originator_ae,
                                      calling_ae)
            return False
        assert originator_message_id is not None
        if owner.cell is not None and owner.cell != self.moves.me.cell:
            assert self.handed is not None  # a cell id is only read from a shared registry
            self.handed.put(source, owner, int(originator_message_id))  # another cell's move
        else:
            source.replace(self.spool.relay
                           / relayed_move_name(owner.tag, int(originator_message_id)))
        return True

    def _refuse_while_away(self, config: RouterConfig, message_id: int | None,
                           originator_ae: str | None, calling_ae: str) -> None:
        """A relay-mode upstream's instance naming a move while the shared moves/ is away:
        most likely another cell's move, which cannot be told; OutOfResources (the upstream
        may send it again) rather than routing it as new work, which would forward a move's
        instance to the rules' destinations while the move counts it failed."""
        if (self.handed is None or message_id is None or self.moves.folder.is_dir()
                or relaying_upstream(config, originator_ae, calling_ae) is None):
            return
        if self._strays.allow(("registry away", calling_ae.strip()), 1):
            log.warning("C-STORE from %s names C-MOVE message ID %d, and %s is not there to "
                        "tell which cell relays it: answered 0xA700 (spool.shared_state_dir "
                        "not mounted?)", calling_ae.strip(), int(message_id), self.moves.folder)
        raise OutOfResources("router's shared state unavailable; retry later")

    def _handed_files(self, message_id: int) -> list[Path]:
        """The instances other cells received for this acceptor's move; none while the shared
        volume is away (the final then counts what the upstream sent there failed)."""
        return [] if self.handed is None else self.handed.files(self.moves.me, message_id)

    def _warn_other_cell(self, config: RouterConfig, message_id: int | None,
                         originator_ae: str | None, calling_ae: str) -> None:
        """A relay-mode upstream's C-STORE naming a move (its message ID and the router or
        the upstream as Move Originator) that no acceptor of this router relays: behind a
        load balancer whose cells share no state, most likely a move another cell relays,
        whose instances came back on an association the balancer gave to this one. Routed as
        ordinary work; say why the move will fail and what to do. (Cells that share
        spool.shared_state_dir share their moves: such an instance is none of theirs.)"""
        upstream = relaying_upstream(config, originator_ae, calling_ae)
        calling = calling_ae.strip()
        if (upstream is None or message_id is None or config.spool.shared_state_dir
                or not self._strays.allow(("other cell", calling), 1)):
            return
        log.warning("C-STORE from %s names C-MOVE message ID %d (Move Originator %s), which "
                    "no relayed C-MOVE of this router has: routed as ordinary work. With "
                    "several router cells behind a load balancer it is most likely another "
                    "cell's relayed move, which then counts it failed: set "
                    "spool.shared_state_dir on every cell, or use move_mode: pass_through "
                    "for destinations.%s (README \"Scaling out\")", calling, int(message_id),
                    (originator_ae or "").strip(), upstream)

    def _warn_stray(self, message_id: int | None, originator_ae: str | None,
                    calling_ae: str) -> None:
        """An instance naming a move in progress from an AE it does not take instances from
        goes to the routing rules; when that is the upstream's storage AE, the move would
        end with nothing delivered: say what to configure (the final counts them failed)."""
        move = self.moves.stray(message_id, originator_ae, calling_ae)
        calling = calling_ae.strip()
        if move is None or not self._strays.allow((calling, move.message_id), 1):
            return
        log.warning("C-STORE from %s names relayed C-MOVE %d (Move Originator %s) whose "
                    "instances come from %s: routed as ordinary work, not delivered for the "
                    "move; if %s stores for upstream %s, add it to "
                    "destinations.%s.store_ae_titles", calling, move.message_id,
                    (originator_ae or "").strip(), " or ".join(move.senders()), calling,
                    move.upstream_ae, move.destination)


@dataclass
class Delivery:
    """One relayed C-MOVE's side towards its requester and its move destination."""

    exchange: Exchange
    move: MoveRelay
    sender: Any
    relay: Path
    originator: tuple[str, int]  # the requester's calling AE and its C-MOVE's message ID
    syntaxes: tuple[str, ...] = ()  # the destination's transfer_syntaxes: nothing else goes
    lock: threading.Lock = field(default_factory=threading.Lock)  # the shared sender's
    # Seconds a sub-operation's transient failures are tried again, from its first try (the
    # move's request_timeout): counted from the move's start, an instance that arrived after a
    # long transfer had no retry left, and a destination busy for a moment failed it.
    retry_window: float = math.inf
    # The instances other cells received for this move (RelayedMoves._handed_files).
    handed: Callable[[int], list[Path]] = lambda message_id: []
    counts: SubOperations = field(default_factory=SubOperations)
    refused: str = ""  # why the destination's TLS failed for good, for the final's comment
    _sent: Counts | None = None

    def arrived(self) -> None:
        """Pass on what the upstream sent for this move, to whichever acceptor (the file
        meta says what each one is); nothing more once the requester cancelled."""
        for path in [*relayed_move_files(self.relay, self.move.message_id),
                     *self.handed(self.move.message_id)]:
            if self.exchange.cancelled():
                return  # what is left is cleared when the move ends: remaining
            try:
                self._check_syntax(path)
                self.counts.delivered(self._send(path))
            except DeliveryError as exc:
                log.warning("relayed C-MOVE: %s", exc)
                self.counts.delivered(None)
                if exc.certificate:
                    self.refused = f"{self.sender.name} {exc.certificate}"
            except OSError as exc:  # gone since listed (the shared volume away): this one
                log.warning("relayed C-MOVE %d: an instance received for it cannot be read "
                            "(%s: %s); counted failed", self.move.message_id, path.parent,
                            exc.strerror or exc)
                self.counts.delivered(None)
            finally:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            self.pending()

    def _send(self, path: Path) -> int:
        """One sub-operation. A transient failure (busy, rejected for now, no connection,
        aborted) is tried again, backing off, for `retry_window`: a destination that
        serves one association at a time may be serving someone else for a moment. A
        certificate one side does not accept stays so while the requester waits: failed."""
        delay = RETRY_FIRST_SECONDS
        deadline = time.monotonic() + self.retry_window
        while True:
            try:
                with self.lock:
                    return int(self.sender.send(_job(path), path, self.originator))
            except DeliveryError as exc:
                if (not exc.transient or exc.certificate
                        or time.monotonic() + delay > deadline
                        or self.exchange.cancelled() or self.exchange.gone()):
                    raise
                log.info("relayed C-MOVE: %s; trying again in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_SECONDS)

    def _check_syntax(self, path: Path) -> None:
        """A destination that lists its transfer_syntaxes gets nothing else; the workers
        would transcode, a relayed move cannot (no codecs in the acceptor)."""
        if not self.syntaxes:
            return
        try:
            with path.open("rb") as fh:
                syntax = read_dataset_file(fh, path.stat().st_size).transfer_syntax_uid
        except (OSError, DatasetFileError):
            return  # the sender says what is wrong with the file
        if syntax and syntax not in self.syntaxes:
            raise DeliveryError("transcode", f"{self.sender.name} does not list transfer "
                                f"syntax {syntax}, and a relayed C-MOVE does not transcode",
                                transient=False)

    def pending(self) -> None:
        """A pending response when the counts changed and the upstream said how many."""
        if not self.counts.known:
            return
        counts = self.counts.counts()
        if counts != self._sent:
            self._sent = counts
            self.exchange.respond(Status.PENDING, counts=counts)


def _job(path: Path) -> JobHeader:
    return JobHeader(job_id=path.stem, calling_ae="", called_ae="", peer_address="",
                     peer_port=0, sop_class_uid="", sop_instance_uid="",
                     transfer_syntax_uid="", size=0, received_at=0.0, rules=(),
                     destinations=())


def _move_loop(call: RelayCall, delivery: Delivery, tend: Callable[[], None]) -> None:
    """`tend`: the acceptor's heartbeat for the other cells, here too since the acceptor's
    main loop stops at a drain, when moves may go on for drain_grace."""
    exchange = delivery.exchange
    while True:
        tend()
        delivery.arrived()
        if exchange.gone():
            raise RequesterGone("its association ended")  # closing the call cancels it
        got = call.poll(exchange.cancelled, wait=0.05)
        if got is None or not isinstance(got[0], RelayResponse):
            continue
        answer = got[0]
        exchange.heard(answer)
        delivery.counts.upstream(answer)
        if not answer.final:
            delivery.pending()
            continue
        delivery.arrived()  # sent before the final
        cancelled = call.cancelled or exchange.cancelled()
        comment = answer.error_comment or delivery.refused
        if not cancelled:
            comment = _lost(delivery) or comment
        exchange.final(delivery.counts.final_status(answer.status, cancelled), comment,
                       delivery.counts.counts())
        return


def _lost(delivery: Delivery) -> str:
    """What the upstream reported sent that never reached this move counts as failed: the
    ErrorComment for it, empty when nothing is missing. The upstream waited for each
    C-STORE's answer, given only once the instance was in relay/, before its final."""
    lost = delivery.counts.count_lost()
    if not lost:
        return ""
    move = delivery.move
    log.warning("relayed C-MOVE %d: %d instance(s) upstream %s reported sent never reached "
                "the move, counted failed (sent under a calling AE other than %s? see "
                "destinations.%s.store_ae_titles; or, behind a load balancer, to another "
                "router cell that shares no spool.shared_state_dir: README \"Scaling "
                "out\")", move.message_id, lost, move.upstream_ae, " or ".join(move.senders()),
                move.destination)
    return f"{lost} instance(s) {move.upstream_ae} reported sent never arrived"
