"""The acceptor process: terminates DICOM associations and hands each instance to the broker."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from typing import Any, Protocol

import zmq
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router import metrics
from router.admission import AcceptorState, Admission
from router.broker_client import BrokerClient
from router.config import RouterConfig
from router.dicom_net import (
    TRANSFER_SYNTAXES,
    configure_pynetdicom,
    prefer_requestor_transfer_syntax,
    set_nodelay,
)
from router.process_util import install_stop_handlers, setup_logging, watch_parent
from router.runtime import Runtime
from router.spool import Spool
from router.store_handler import StoreHandler
from workers.rules import RuleSet

log = logging.getLogger(__name__)


class SharedInt(Protocol):
    value: int


def _on_requested(event: Any, admission: Admission) -> None:
    """Turn an association away with "temporary congestion" while new work is refused."""
    refusal = admission.refusal()
    if refusal is None:
        return
    reason, message = refusal
    metrics.REFUSALS.labels(reason).inc()
    metrics.ASSOCIATIONS.labels("rejected").inc()
    log.warning("rejecting association from %s: %s", event.assoc.requestor.ae_title, message)
    # A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation), temporary congestion
    event.assoc.acse.send_reject(0x02, 0x03, 0x01)
    event.assoc.kill()  # as pynetdicom's own rejections do: lets the DUL send the RJ first


def _publish_state(admission: Admission, state: SharedInt, stop: threading.Event) -> None:
    """Keep the supervisor's view (for /readyz) of whether we accept work up to date."""
    while not stop.wait(0.25):
        refusal = admission.refusal()
        state.value = AcceptorState.ACCEPTING if refusal is None else AcceptorState.code(refusal[0])


def build_ae(config: RouterConfig) -> AE:
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = config.listen.max_pdu
    ae.maximum_associations = config.listen.max_associations
    ae.acse_timeout = config.listen.acse_timeout
    ae.dimse_timeout = config.listen.dimse_timeout
    ae.network_timeout = config.listen.network_timeout
    ae.require_called_aet = config.listen.require_called_ae
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    return ae


def _on_echo(event: Any) -> int:
    metrics.DIMSE_REQUESTS.labels("C-ECHO", "0x0000").inc()
    return 0x0000


def _on_accepted(event: Any) -> None:
    event.assoc.router_counted = True  # per-association state lives on the association
    metrics.ASSOCIATIONS.labels("accepted").inc()
    metrics.ACTIVE_ASSOCIATIONS.inc()


def _on_rejected(event: Any) -> None:
    metrics.ASSOCIATIONS.labels("rejected").inc()


def _on_closed(event: Any) -> None:
    if getattr(event.assoc, "router_counted", False):
        event.assoc.router_counted = False
        metrics.ACTIVE_ASSOCIATIONS.dec()


def handlers(store: StoreHandler, admission: Admission) -> list[Any]:
    return [
        (evt.EVT_CONN_OPEN, set_nodelay),
        (evt.EVT_REQUESTED, _on_requested, [admission]),
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_C_STORE, store),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_REJECTED, _on_rejected),
        (evt.EVT_CONN_CLOSE, _on_closed),
    ]


def _drain(ae: AE, grace: float) -> None:
    """Let associations in progress finish, up to `grace` seconds; then abort the rest."""
    deadline = time.monotonic() + grace
    while ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.1)
    for assoc in ae.active_associations:
        log.warning("aborting association from %s after the drain grace period",
                    assoc.requestor.ae_title)
        assoc.abort()


def main(config: RouterConfig, runtime: Runtime, state: SharedInt) -> None:
    """Entry point of the spawned acceptor process."""
    setup_logging(config.log_level)
    stop = threading.Event()
    install_stop_handlers(stop)
    watch_parent(stop)
    configure_pynetdicom(chunked_receive=True)
    prefer_requestor_transfer_syntax()
    spool = Spool(config.spool.path).create()
    # Chunked receive writes under tempfile's folder: on the spool, taking ownership is a rename.
    tempfile.tempdir = str(spool.incoming)

    context = zmq.Context()
    broker = BrokerClient(context, runtime.frontend, config.listen.submit_timeout)
    admission = Admission(config.spool)
    store = StoreHandler(spool, RuleSet(config.rules), broker, admission)
    ae = build_ae(config)
    address = (config.listen.host, config.listen.port)
    server = ae.start_server(address, block=False, evt_handlers=handlers(store, admission))
    assert server is not None  # block=False returns the server
    log.info("accepting DICOM associations as %s on %s:%d", config.ae_title, *address)
    publisher = threading.Thread(target=_publish_state, args=(admission, state, stop),
                                 name="state", daemon=True)
    publisher.start()
    stop.wait()
    admission.draining = True
    state.value = AcceptorState.DRAINING
    log.info("stopping: no new associations; letting those in progress finish")
    server.shutdown()  # closes the listening socket: new connections are refused
    _drain(ae, grace=config.drain_grace)
    broker.close()
    context.term()
