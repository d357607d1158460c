"""The durable floor: a minimal C-STORE receiver that fsyncs each instance and forwards nothing.

    .venv/bin/python -m loadtest.durable_receiver --port 11113 --folder /tmp/received

The benchmark's `durable-receiver` case (loadtest/targets.py). It is the least any receiver
must do before it may answer Success under the router's ack rule: take the PDUs apart
(router/dicom/engine, the router's own protocol core), write the dataset to a file of its
own, fsync it, answer. No journal, no broker, no forwarding, no access rules, no metrics,
one thread per association, and no fsync of the folder for the new file's name (a durable
receiver needs one on most filesystems; leaving it out can only raise the floor, so a
target above the floor stays out of reach). Files are named by a counter, never by a UID
the peer sent. What it reaches against `direct` in the same run bounds what
the router can reach there: the router does all of this and more on the same cores, so a
target above this floor's ratio cannot be met on that machine with an fsync per instance.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import struct
import threading
from pathlib import Path

from router.dicom.engine import (
    AssociateAC,
    Association,
    AssociationRequested,
    CEchoRQ,
    CEchoRSP,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    DataFragment,
    PresentationContextAC,
    ProtocolError,
    ReleaseRequested,
    ReleaseRP,
    SendCommand,
)
from router.dicom.quick_ack import ack_now

MAX_PDU = 262_144
_NAMES = itertools.count(1)  # next() on it is atomic under the GIL


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) & 1:
        value += b"\0"
    group, element = tag >> 16, tag & 0xFFFF
    if vr == b"OB":
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    """Preamble, DICM and a file meta group (PS3.10 7.1): enough for a Part 10 file."""
    body = (_element(0x00020001, b"OB", b"\0\1")
            + _element(0x00020002, b"UI", sop_class.encode())
            + _element(0x00020003, b"UI", sop_instance.encode())
            + _element(0x00020010, b"UI", syntax.encode())
            + _element(0x00020012, b"UI", b"1.2.826.0.1.3680043.10.1"))
    return (b"\0" * 128 + b"DICM" + _element(0x00020000, b"UL", struct.pack("<I", len(body)))
            + body)


class Connection:
    """One association, served on its own thread with a blocking socket."""

    def __init__(self, sock: socket.socket, folder: Path) -> None:
        self.sock, self.folder = sock, folder
        self.engine = Association.acceptor(max_pdu_length=MAX_PDU)
        self.syntaxes: dict[int, str] = {}
        self.fd = -1
        self.store: CStoreRQ | None = None
        self.context = 0

    def run(self) -> None:
        buffer = bytearray(MAX_PDU + 64)
        view = memoryview(buffer)
        try:
            while not self.engine.should_close:
                n = self.sock.recv_into(buffer)
                if not n:
                    return
                ack_now(self.sock)  # as the router does: DCMTK's defaults wait on our ACK
                for event in self.engine.receive_data(view[:n]):
                    self._on(event)
        except (OSError, ProtocolError):
            return
        finally:
            if self.fd >= 0:
                os.close(self.fd)
            self.sock.close()

    def _on(self, event: object) -> None:
        if isinstance(event, AssociationRequested):
            rq = event.rq
            contexts = tuple(PresentationContextAC(c.context_id, 0, c.transfer_syntaxes[0])
                             for c in rq.contexts)
            self.syntaxes = {c.context_id: c.transfer_syntax for c in contexts}
            self.sock.sendall(self.engine.send(AssociateAC(rq.called_ae, rq.calling_ae,
                                                           contexts, rq.user_info)))
        elif isinstance(event, CommandReceived):
            command = event.command
            if isinstance(command, CEchoRQ):
                self.sock.sendall(self.engine.send(
                    SendCommand(event.context_id, CEchoRSP(command.message_id, 0))))
            elif isinstance(command, CStoreRQ):
                self.store, self.context = command, event.context_id
                path = self.folder / f"{next(_NAMES):08d}.dcm"
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(self.fd, file_meta(command.sop_class_uid, command.sop_instance_uid,
                                            self.syntaxes.get(event.context_id, "")))
        elif isinstance(event, DataFragment) and self.fd >= 0:
            os.write(self.fd, event.data)
            if event.last:
                os.fsync(self.fd)
                os.close(self.fd)
                self.fd = -1
                store = self.store
                assert store is not None
                self.sock.sendall(self.engine.send(SendCommand(self.context, CStoreRSP(
                    store.message_id, store.sop_class_uid, store.sop_instance_uid, 0))))
        elif isinstance(event, ReleaseRequested):
            self.sock.sendall(self.engine.send(ReleaseRP()))


def serve(port: int, folder: Path, stop: threading.Event) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=Connection(sock, folder).run, daemon=True).start()
    listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", type=Path, required=True)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    serve(args.port, args.folder, stop)


if __name__ == "__main__":
    main()
