"""The acceptor process: terminates DICOM associations and hands each instance to the broker."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType

import zmq
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.presentation import (
    BasicWorklistManagementPresentationContexts,
    ColorPalettePresentationContexts,
    DefinedProcedureProtocolPresentationContexts,
    DisplaySystemPresentationContexts,
    HangingProtocolPresentationContexts,
    ImplantTemplatePresentationContexts,
    InstanceAvailabilityPresentationContexts,
    ModalityPerformedPresentationContexts,
    ProcedureStepPresentationContexts,
    ProtocolApprovalPresentationContexts,
    QueryRetrievePresentationContexts,
    RelevantPatientInformationPresentationContexts,
    StorageCommitmentPresentationContexts,
    UnifiedProcedurePresentationContexts,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router.acceptor.access import AccessPolicy
from router.acceptor.admission import AcceptorState, Admission
from router.acceptor.association_events import AssociationEvents
from router.acceptor.broker_client import BrokerClient
from router.acceptor.connection import AcceptorServices, ConnectionSettings
from router.acceptor.negotiation import AcceptorOffer
from router.acceptor.server import EngineServer
from router.acceptor.store_handler import StoreHandler
from router.audit.trail import AuditTrail
from router.core import reload as reload_config
from router.core.acceptor_seat import AcceptorSeat, SharedInt
from router.core.config import RouterConfig
from router.core.errors import RouterError
from router.core.log_safety import AUDIT_REPEAT_BUDGET, RepeatLimiter
from router.core.process_util import install_stop_handlers, setup_logging, watch_parent
from router.core.rules import RuleSet
from router.core.runtime import Runtime
from router.core.spool import Spool
from router.core.status_snapshots import LiveAssociations, publish_forever
from router.dicom.guarded_transport import ReadLimits
from router.dicom.net import (
    TRANSFER_SYNTAXES,
    configure_pynetdicom,
    prefer_requestor_transfer_syntax,
)
from router.dicom.pending import PendingConnections
from router.dicom.store_client import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from router.dicom.tls_listener import RouterAssociationServer, TLSListener, start_server
from router.relay.server import RelayServer

log = logging.getLogger(__name__)


def build_ae(config: RouterConfig) -> AE:
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = config.listen.max_pdu
    configure_ae(ae, config)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        # Both roles: a C-GET requester takes its instances back as the SCP of storage.
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES,
                                 scu_role=True, scp_role=True)
    for context in RELAYED_CONTEXTS:
        assert context.abstract_syntax is not None
        # Storage commitment results may come back as N-EVENT-REPORTs in either role.
        ae.add_supported_context(context.abstract_syntax, RELAY_TRANSFER_SYNTAXES,
                                 scu_role=True, scp_role=True)
    return ae


def configure_ae(ae: AE, config: RouterConfig) -> None:
    """The AE settings a reload may change (the PDU size and AE title need a restart)."""
    listen = config.listen
    # max_associations is enforced in AssociationEvents over requests actually received;
    # pynetdicom's own count includes connections still sending theirs, bounded apart.
    ae.maximum_associations = listen.max_associations + listen.max_pending
    ae.acse_timeout = listen.acse_timeout
    ae.dimse_timeout = listen.dimse_timeout
    ae.network_timeout = listen.network_timeout
    ae.require_called_aet = False  # checked (and counted) by AccessPolicy


def read_limits(config: RouterConfig) -> ReadLimits:
    return ReadLimits(
        request_timeout=min(config.listen.association_request_timeout,
                            config.listen.acse_timeout),
        network_timeout=config.listen.network_timeout,
        max_pdu=config.listen.max_pdu,
        max_message_bytes=config.listen.max_message_bytes,
        max_dataset_bytes=config.listen.max_dataset_bytes,
    )


STORAGE_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


def connection_settings(config: RouterConfig, spool: Spool) -> ConnectionSettings:
    """What the engine's connections serve and how long they wait (new ones see a reload)."""
    limits = read_limits(config)
    offer = AcceptorOffer(config.ae_title, config.listen.max_pdu, STORAGE_CLASSES,
                          frozenset(TRANSFER_SYNTAXES), IMPLEMENTATION_CLASS_UID,
                          IMPLEMENTATION_VERSION)
    return ConnectionSettings(offer, limits.request_timeout, limits.network_timeout,
                              limits.max_dataset_bytes, spool.incoming)


def pynetdicom_only() -> bool:
    """DICOM_ROUTER_PYNETDICOM_ACCEPTOR=1: every association on pynetdicom, as before the
    engine served storage (to measure the difference, or to rule the engine out)."""
    return os.environ.get("DICOM_ROUTER_PYNETDICOM_ACCEPTOR", "") in ("1", "true", "yes")


def _publish_state(admission: Admission, state: SharedInt, stop: threading.Event) -> None:
    """Keep the supervisor's view (for /readyz) of whether we accept work up to date."""
    while not stop.wait(0.25):
        refusal = admission.refusal()
        state.value = AcceptorState.ACCEPTING if refusal is None else AcceptorState.code(refusal[0])


def _drain(ae: AE, grace: float) -> None:
    """Let established associations finish, up to `grace` seconds; then abort the rest.

    A connection still negotiating (or one that never sends an A-ASSOCIATE-RQ) has no work
    in progress: it is aborted at once instead of holding the stop for its acse_timeout.
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for assoc in ae.active_associations:
            if not assoc.is_established:
                assoc.abort()
        if not ae.active_associations:
            return
        time.sleep(0.1)
    for assoc in ae.active_associations:
        log.warning("aborting association from %s after the drain grace period",
                    assoc.requestor.ae_title)
        assoc.abort()


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


# Queries, retrieves and N-services the router relays (router/relay/server.py); their
# identifiers and datasets are small and travel in either little endian syntax.
RELAYED_CONTEXTS = [
    *QueryRetrievePresentationContexts, *BasicWorklistManagementPresentationContexts,
    *ModalityPerformedPresentationContexts, *StorageCommitmentPresentationContexts,
    *ProcedureStepPresentationContexts, *UnifiedProcedurePresentationContexts,
    *InstanceAvailabilityPresentationContexts, *RelevantPatientInformationPresentationContexts,
    *HangingProtocolPresentationContexts, *ColorPalettePresentationContexts,
    *DefinedProcedureProtocolPresentationContexts, *ImplantTemplatePresentationContexts,
    *ProtocolApprovalPresentationContexts, *DisplaySystemPresentationContexts,
]
RELAY_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class LiveConfig:
    """Applies a reloaded config to the running acceptor: new associations see it at once,
    associations in progress keep what they negotiated."""

    def __init__(self, config: RouterConfig, runtime: Runtime, ae: AE, store: StoreHandler,
                 events: AssociationEvents, server: RouterAssociationServer,
                 tls: TLSListener | None, relay: RelayServer, services: AcceptorServices,
                 spool: Spool) -> None:
        self.config, self.runtime, self.ae, self.store = config, runtime, ae, store
        self.events, self.server, self.tls, self.relay = events, server, tls, relay
        self.services, self.spool = services, spool

    def on_sighup(self, signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=self.reload, name="reload", daemon=True).start()

    def reload(self) -> None:
        if self.tls is not None:
            self.tls.reload()  # rotated certificates and keys, whatever the config says
        try:
            loaded = reload_config.load(self.runtime.directory)
        except (OSError, RouterError, KeyError, ValueError) as exc:
            log.error("cannot read the reloaded config; keeping the current one: %s", exc)
            return
        if loaded is None or loaded[1] == self.config:
            return
        new = loaded[1]
        self.apply(new)
        log.info("applied the reloaded config: %d rules", len(new.rules))

    def apply(self, new: RouterConfig) -> None:
        setup_logging(new.log_level, new.log_format)
        rules = RuleSet(new.rules)
        self.store.set_rules(rules, new.listen.max_dataset_bytes)
        self.relay.reconfigure(new, rules)
        self.events.access.reconfigure(new.listen)
        configure_ae(self.ae, new)
        self.server.limits = read_limits(new)
        self.services.settings = connection_settings(new, self.spool)
        if self.server.pending is not None:
            self.server.pending.reconfigure(new.listen.max_pending_per_source,
                                            new.listen.max_pending)
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
    # Chunked send too: C-GET sub-operations go to the requester from files, as they are.
    configure_pynetdicom(chunked_receive=True, chunked_send=True)
    prefer_requestor_transfer_syntax()
    spool = Spool(config.spool.path).create()
    # Chunked receive writes under tempfile's folder: on the spool, taking ownership is a rename.
    tempfile.tempdir = str(spool.incoming)

    context = zmq.Context()
    broker = BrokerClient(context, runtime.frontend, config.listen.submit_timeout)
    admission = Admission(config.spool)
    audit = AuditTrail(config.audit, config.ae_title) if config.audit.enabled else None
    rules = RuleSet(config.rules)
    relay = RelayServer(config, context, runtime.frontend, rules, spool)
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
    ae = build_ae(config)
    address = (config.listen.host, config.listen.port)
    pending = PendingConnections(config.listen.max_pending_per_source, config.listen.max_pending,
                                 limits.pending, column)
    # The engine serves storage and verification; associations that propose a relayed
    # service are handed to pynetdicom's server, which then never accepts on its own.
    engine_serves = not pynetdicom_only()
    server = start_server(ae, address, events.handlers(store), tls, read_limits(config),
                          events.finished, pending, config.listen.backlog, seat.listener,
                          serve=not engine_serves)
    server.relay = relay
    services = AcceptorServices(connection_settings(config, spool), events, store, tls,
                                server.handoff)
    engine = EngineServer(seat.listener, services, pending)
    if engine_serves:
        engine.start()
    live_config = LiveConfig(config, runtime, ae, store, events, server, tls, relay, services,
                             spool)
    signal.signal(signal.SIGHUP, live_config.on_sighup)
    log.info("%s accepting DICOM associations as %s on %s:%d (TLS %s)", seat.name,
             config.ae_title, *address, config.listen.tls.mode)
    publisher = threading.Thread(target=_publish_state, args=(admission, state, stop),
                                 name="state", daemon=True)
    publisher.start()
    threading.Thread(target=publish_forever, name="live-status", daemon=True,
                     args=(runtime.status_dir, seat.name, live.status, stop)).start()
    # Wait with a timeout: a signal the kernel hands to another thread (every association
    # has two) reaches its Python handler only when this thread runs again, so an untimed
    # wait could leave SIGHUP or SIGTERM unhandled indefinitely.
    while not stop.wait(0.5):
        pass
    admission.draining = True
    state.value = AcceptorState.DRAINING
    log.info("stopping: no new associations; letting those in progress finish")
    deadline = time.monotonic() + live_config.drain_grace
    if engine_serves:
        engine.shutdown()  # closes the listening socket: new connections are refused
        engine.drain(live_config.drain_grace)
    else:
        server.shutdown()
    _drain(ae, grace=max(0.0, deadline - time.monotonic()))
    if audit is not None:
        audit.close()
    broker.close()
    context.term()
