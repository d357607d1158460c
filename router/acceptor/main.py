"""The acceptor process: terminates DICOM associations and hands each instance to the broker."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import zmq

from router.acceptor.access import AccessPolicy
from router.acceptor.admission import AcceptorState, Admission
from router.acceptor.association_events import AssociationEvents
from router.acceptor.broker_client import BrokerClient
from router.acceptor.connection_settings import AcceptorServices, ConnectionSettings
from router.acceptor.negotiation import AcceptorOffer
from router.acceptor.server import EngineServer
from router.acceptor.store_handler import StoreHandler
from router.acceptor.tls_listener import TLSListener
from router.audit.trail import AuditTrail
from router.core import reload as reload_config
from router.core.acceptor_seat import AcceptorSeat, SharedInt
from router.core.client_tls import CLIENT_CONTEXTS
from router.core.config import RouterConfig
from router.core.errors import RouterError
from router.core.log_safety import AUDIT_REPEAT_BUDGET, RepeatLimiter
from router.core.peer_address import host_port
from router.core.process_util import (
    install_stop_handlers,
    run_on_signal,
    setup_logging,
    watch_parent,
)
from router.core.rules import RuleSet, deidentifying
from router.core.runtime import Runtime
from router.core.spool import Spool
from router.core.status_snapshots import LiveAssociations, publish_forever
from router.dicom import uid_tables
from router.dicom.pending import PendingConnections
from router.dicom.store_client import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from router.relay.server import RelayServer

log = logging.getLogger(__name__)


def connection_settings(config: RouterConfig, spool: Spool) -> ConnectionSettings:
    """What the connections serve and how long they wait (new ones see a reload)."""
    listen = config.listen
    storage = STORAGE_CLASSES | frozenset(listen.extra_storage_classes)
    offer = AcceptorOffer(config.ae_title, listen.max_pdu, storage, TRANSFER_SYNTAXES,
                          RELAYED_CLASSES, RELAY_TRANSFER_SYNTAXES, IMPLEMENTATION_CLASS_UID,
                          IMPLEMENTATION_VERSION)
    return ConnectionSettings(
        offer, request_timeout=min(listen.association_request_timeout, listen.acse_timeout),
        network_timeout=listen.network_timeout, max_dataset_bytes=listen.max_dataset_bytes,
        max_message_bytes=listen.max_message_bytes, response_timeout=listen.dimse_timeout,
        incoming=spool.incoming, recycler=spool.recycler)


def _publish_state(admission: Admission, state: SharedInt, stop: threading.Event) -> None:
    """Keep the supervisor's view (for /readyz) of whether we accept work up to date: at
    once (the router is ready as soon as it accepts), then four times a second."""
    while True:
        refusal = admission.refusal()
        state.value = AcceptorState.ACCEPTING if refusal is None else AcceptorState.code(refusal[0])
        if stop.wait(0.25):
            return


def _tls_alert(audit: AuditTrail | None) -> Callable[[str, str], None] | None:
    if audit is None:
        return None
    trail = audit
    # A peer that fails its handshake over and over (a scanner, a misconfigured modality)
    # is audited a few times a minute, not once per attempt (~1.2 KB each).
    limiter = RepeatLimiter(what="audit_tls_failure")

    def alert(reason: str, peer: str) -> None:
        if limiter.allow((peer, reason), AUDIT_REPEAT_BUDGET):
            dropped = limiter.suppressed((peer, reason))
            note = f" ({dropped} earlier failures were not audited)" if dropped else ""
            trail.security_alert("bad_certificate", f"TLS handshake failed: {reason}{note}",
                                 peer)

    return alert


# Storage in any syntax, accepted as sent, so that the router forwards the very bytes it
# received. Private and newer classes come from listen.extra_storage_classes. The lists are
# pynetdicom's and pydicom's (router/dicom/uid_tables.py): the acceptor imports neither
# until it needs them.
STORAGE_CLASSES = frozenset(uid_tables.STORAGE_CLASSES)
TRANSFER_SYNTAXES = frozenset(uid_tables.TRANSFER_SYNTAXES)
# Queries, retrieves and N-services the router relays (router/relay/server.py); their
# identifiers and datasets are small and travel in either little endian syntax.
RELAYED_CLASSES = frozenset(uid_tables.RELAYED_CLASSES)
RELAY_TRANSFER_SYNTAXES = frozenset([uid_tables.EXPLICIT_VR_LE, uid_tables.IMPLICIT_VR_LE])


class LiveConfig:
    """Applies a reloaded config to the running acceptor: new associations see it at once,
    associations in progress keep what they negotiated."""

    def __init__(self, config: RouterConfig, runtime: Runtime, store: StoreHandler,
                 events: AssociationEvents, pending: PendingConnections,
                 tls: TLSListener | None, relay: RelayServer, services: AcceptorServices,
                 spool: Spool, audit: AuditTrail | None = None) -> None:
        self.config, self.runtime, self.store, self.events = config, runtime, store, events
        self.pending, self.tls, self.relay = pending, tls, relay
        self.services, self.spool, self.audit = services, spool, audit

    def reload(self) -> None:
        CLIENT_CONTEXTS.request_reload()  # relayed C-MOVEs' destinations: rotated files
        new = self._changed_config()
        if self.tls is not None:
            # Every SIGHUP reads the certificates, keys and CRL again (rotated files), with
            # the reloaded listen.tls settings when they changed.
            self.tls.reload((new or self.config).listen.tls)
        if self.audit is not None:
            self.audit.reload_tls()
        if new is None:
            return
        self.apply(new)
        log.info("applied the reloaded config: %d rules", len(new.rules))

    def _changed_config(self) -> RouterConfig | None:
        """The config the supervisor validated last, or None if unchanged or unreadable."""
        try:
            loaded = reload_config.load(self.runtime.directory)
        except (OSError, RouterError, KeyError, ValueError) as exc:
            log.error("cannot read the reloaded config; keeping the current one: %s", exc)
            return None
        if loaded is None or loaded[1] == self.config:
            return None
        return loaded[1]

    def apply(self, new: RouterConfig) -> None:
        setup_logging(new.log_level, new.log_format)
        rules = RuleSet(new.rules, deidentifying(new))
        self.store.set_rules(rules, new.listen.max_dataset_bytes)
        self.relay.reconfigure(new, rules)
        self.events.access.reconfigure(new.listen)
        self.services.settings = connection_settings(new, self.spool)
        self.pending.reconfigure(new.listen.max_pending_per_source, new.listen.max_pending)
        self.config = new

    @property
    def drain_grace(self) -> float:
        return self.config.drain_grace


def main(config: RouterConfig, runtime: Runtime, seat: AcceptorSeat) -> None:
    """Entry point of a spawned acceptor process: it serves `seat.listener`, one of the
    listening sockets the supervisor bound on listen.host:listen.port."""
    setup_logging(config.log_level, config.log_format)
    stop = threading.Event()
    install_stop_handlers(stop)
    watch_parent(stop)
    spool = Spool(config.spool.path).create()

    context = zmq.Context()
    broker = BrokerClient(context, runtime.frontend, config.listen.submit_timeout)
    admission = Admission(config.spool)
    audit = AuditTrail(config.audit, config.ae_title) if config.audit.enabled else None
    rules = RuleSet(config.rules, deidentifying(config))
    relay = RelayServer(config, context, runtime.frontend, rules, spool, audit)
    store = StoreHandler(spool, rules, broker, admission, config.listen.max_dataset_bytes, audit,
                         relay)
    live = LiveAssociations()
    limits, column, state = seat.limits, seat.column, seat.state
    access = AccessPolicy(config.listen, limits.calling_ae, column)
    events = AssociationEvents(access, admission, audit, live,
                               tls=config.listen.tls.mode != "off",
                               slots=limits.associations, column=column)
    tls = None
    if config.listen.tls.mode != "off":
        tls = TLSListener(config.listen.tls, _tls_alert(audit))
    pending = PendingConnections(config.listen.max_pending_per_source, config.listen.max_pending,
                                 limits.pending, column)
    services = AcceptorServices(connection_settings(config, spool), events, store, tls, relay)
    server = EngineServer(seat.listener, services, pending)
    server.start()
    live_config = LiveConfig(config, runtime, store, events, pending, tls, relay, services,
                             spool, audit)
    run_on_signal([signal.SIGHUP], lambda signum: live_config.reload())  # one at a time
    # Its first snapshot tells the supervisor that SIGHUP is handled: right after the handler.
    threading.Thread(target=publish_forever, name="live-status", daemon=True,
                     args=(runtime.status_dir, seat.name, live.status, stop)).start()
    log.info("%s accepting DICOM associations as %s on %s (TLS %s)", seat.name,
             config.ae_title, host_port(config.listen.host, config.listen.port),
             config.listen.tls.mode)
    publisher = threading.Thread(target=_publish_state, args=(admission, state, stop),
                                 name="state", daemon=True)
    publisher.start()
    # Storage commitment results a requester did not take yet: sent again until it does.
    threading.Thread(target=relay.courier.retry_forever, args=(stop,), name="commit-results",
                     daemon=True).start()
    # Wait with a timeout: a signal the kernel hands to another thread (every association
    # has one) reaches its Python handler only when this thread runs again, so an untimed
    # wait could leave SIGHUP or SIGTERM unhandled indefinitely.
    while not stop.wait(0.5):
        spool.trim_journal()  # a closed segment goes once its jobs are over, traffic or not
        relay.moves.tend()  # the other cells see this acceptor's relayed C-MOVEs alive
        events.flush_due_tallies(time.monotonic())
    admission.draining = True
    state.value = AcceptorState.DRAINING
    log.info("stopping: no new associations; letting those in progress finish")
    server.shutdown()  # closes the listening socket: new connections are refused
    server.drain(live_config.drain_grace)
    if audit is not None:
        audit.close()
    broker.close()
    context.term()
