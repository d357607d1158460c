"""`dicom-router echo` and `send` against a peer that accepts the TCP connection and never
answers the A-ASSOCIATE-RQ: a timeout, said as one, not an abort by the peer."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from router.cli.main import main
from router.cli.send_association import (
    IMPLICIT_VR_LE,
    VERIFICATION,
    AssociationError,
    Peer,
    application_entity,
    associate,
)
from tests.dcmtk import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket whose connections the kernel accepts and nobody reads."""
    port = free_port()
    with socket.create_server(("127.0.0.1", port), backlog=8):
        yield port


def test_send_says_no_answer_within_the_acse_timeout(silent_port: int) -> None:
    peer = Peer("127.0.0.1", silent_port, acse_timeout=1.0)
    with pytest.raises(AssociationError) as failed:
        associate(application_entity(peer), peer, [(VERIFICATION, IMPLICIT_VR_LE)])
    assert str(failed.value) == (f"127.0.0.1:{silent_port}: no answer to the association "
                                 "request within 1 s")


def test_echo_says_no_answer_within_its_timeout(silent_port: int,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "127.0.0.1", str(silent_port), "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "no answer to the association request within 1 s" in err, err
    assert "aborted" not in err, err
