"""The naive router: one pynetdicom process that forwards each C-STORE synchronously.

The baseline the router has to beat, written the way a first attempt usually is:
a single-process pynetdicom SCP whose C-STORE handler decodes the dataset
(``event.dataset``) and sends it on as an SCU before answering the sender. It is not
crippled on purpose: it sets TCP_NODELAY on both sides (without it every C-STORE
waits ~40 ms for a delayed ACK), uses 256 KB PDUs, keeps one outbound association
per inbound association (proposing exactly the contexts the sender got accepted, so
nothing is converted), and accepts every storage SOP class in every syntax the
sample generator writes.

    python -m loadtest.naive_forwarder --port 11112 --dest-port 11113 --dest-ae DEST
"""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
import threading
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt

from tests.dicom_samples import ALL_SYNTAXES

MAX_PDU = 262_144
FAILURE = 0xC000  # "Cannot understand": the forward failed


def _nodelay(event: Any) -> None:
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Forwarder:
    def __init__(self, dest_host: str, dest_port: int, dest_ae: str) -> None:
        self.dest = (dest_host, dest_port, dest_ae)
        self.scu = AE(ae_title="NAIVE")
        self.scu.maximum_pdu_size = MAX_PDU
        self.outbound: dict[int, Any] = {}
        self.lock = threading.Lock()

    def _connect(self, inbound: Any) -> Any:
        contexts = [
            build_context(cx.abstract_syntax, cx.transfer_syntax[0])
            for cx in inbound.accepted_contexts
        ]
        host, port, ae_title = self.dest
        return self.scu.associate(
            host,
            port,
            contexts=contexts,
            ae_title=ae_title,
            max_pdu=MAX_PDU,
            evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
        )

    def on_store(self, event: Any) -> int:
        key = id(event.assoc)
        out = self.outbound.get(key)
        if out is None or not out.is_established:
            out = self._connect(event.assoc)
            with self.lock:
                self.outbound[key] = out
        if not out.is_established:
            return FAILURE
        dataset: Dataset = event.dataset
        dataset.file_meta = event.file_meta
        status = out.send_c_store(dataset)
        return int(status.Status) if status and "Status" in status else FAILURE

    def on_close(self, event: Any) -> None:
        with self.lock:
            out = self.outbound.pop(id(event.assoc), None)
        if out is not None and out.is_established:
            out.release()


def _server_ssl(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ae-title", default="NAIVE")
    parser.add_argument("--dest-host", default="127.0.0.1")
    parser.add_argument("--dest-port", type=int, required=True)
    parser.add_argument("--dest-ae", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args(argv)

    forwarder = Forwarder(args.dest_host, args.dest_port, args.dest_ae)
    scp = AE(ae_title=args.ae_title)
    scp.maximum_pdu_size = MAX_PDU
    scp.maximum_associations = 64
    for cx in AllStoragePresentationContexts:
        scp.add_supported_context(cx.abstract_syntax, list(ALL_SYNTAXES))
    handlers = [
        (evt.EVT_CONN_OPEN, _nodelay),
        (evt.EVT_C_STORE, forwarder.on_store),
        (evt.EVT_CONN_CLOSE, forwarder.on_close),
    ]
    ssl_context = _server_ssl(args.tls_cert, args.tls_key) if args.tls_cert else None
    server = scp.start_server(
        (args.host, args.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
