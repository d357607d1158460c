"""router/acceptor/tls_records.py over a real TLS connection on loopback: reads on past one
record while data is there, never waits on a silent peer, keeps what came before the end."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.acceptor.tls_records import RecordReader
from tests.pki import CertificateAuthority

PATIENCE = 60.0  # the socket's timeout: far beyond any bound below


@pytest.fixture
def tls_pair(tmp_path: Path) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """(the sender's end, the acceptor's end)."""
    ca = CertificateAuthority(tmp_path, "CA")
    server = ca.issue("router", dns=("localhost",), server=True)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server.cert, server.key)
    client_context = ssl.create_default_context(cafile=str(ca.cert_path))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    accepted: list[ssl.SSLSocket] = []
    handshake = threading.Thread(target=lambda: accepted.append(
        server_context.wrap_socket(theirs, server_side=True)))
    handshake.start()
    sender = client_context.wrap_socket(raw, server_hostname="localhost")
    handshake.join(PATIENCE)
    [acceptor] = accepted
    acceptor.settimeout(PATIENCE)
    yield sender, acceptor
    sender.close()
    acceptor.close()


def test_records_already_there_are_read_in_one_fill(
        tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    sender, acceptor = tls_pair
    data = os.urandom(320 * 1024)  # twenty 16 KiB records and more
    sender.sendall(data)
    sender.sendall(b"!")  # sent after everything else: once it is in, all of it is
    buffer = bytearray(256 * 1024)
    view = memoryview(buffer)
    first = acceptor.recv_into(view)
    assert 0 < first <= 16 * 1024  # what TLS hands over per read
    count = RecordReader(acceptor).fill(view, first)
    received = bytes(view[:count])
    while len(received) < len(data) + 1:
        received += acceptor.recv(65536)
    assert received == data + b"!"
    assert count > first  # more than one record per fill (the whole buffer when all came)


def test_a_silent_peer_is_not_waited_for(tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket]
                                         ) -> None:
    sender, acceptor = tls_pair
    sender.sendall(b"x" * 100)
    view = memoryview(bytearray(1024))
    first = acceptor.recv_into(view)
    result: list[int] = []
    filling = threading.Thread(target=lambda: result.append(
        RecordReader(acceptor).fill(view, first)), daemon=True)
    filling.start()
    filling.join(10)  # a fill that waited for the peer would wait PATIENCE seconds
    assert not filling.is_alive(), "fill waited for a peer that sends nothing"
    assert result == [100] and bytes(view[:100]) == b"x" * 100


def test_what_came_before_the_end_is_kept_and_the_end_left_to_the_next_read(
        tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    sender, acceptor = tls_pair
    data = os.urandom(40 * 1024)
    sender.sendall(data)
    # A FIN without close_notify, as a peer that just goes (close() could send a reset, which
    # drops what is unread, with unread session tickets on the sender's side).
    sender.shutdown(socket.SHUT_WR)
    view = memoryview(bytearray(256 * 1024))
    count = RecordReader(acceptor).fill(view, acceptor.recv_into(view))
    received = bytes(view[:count])
    while len(received) < len(data):
        chunk = acceptor.recv(65536)
        assert chunk, "data lost before the end"
        received += chunk
    assert received == data
    assert acceptor.recv(65536) == b""  # the end, for the next read to meet
