"""router/dicom/engine under hypothesis: arbitrary bytes, and mutations of valid sessions,
in arbitrary chunks, never raise anything but ProtocolError and never make the engine hold
more than its limits (asserted on its internal buffers after every call)."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.dicom.engine import (
    Association,
    AssociationRequested,
    CEchoRQ,
    CEchoRSP,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    ProtocolError,
    ReleaseRequested,
    ReleaseRP,
    ReleaseRQ,
    SendCommand,
    SendData,
)
from router.dicom.engine.dimse import encode_command
from router.dicom.engine.pdus import encode_pdu

from .engine_helpers import CT, associated, make_ac, make_rq, split_message

LIMITS = {"max_pdu_length": 1024, "max_associate_length": 2048, "max_command_length": 512}
# What the engine may hold between calls: one association PDU body, one command set, and a
# partial PDU or PDV header.
BOUND = LIMITS["max_associate_length"] + LIMITS["max_command_length"] + 6
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _session_to_acceptor() -> bytes:
    store = split_message(1, encode_command(CStoreRQ(1, CT, "1.2.3.4")), bytes(range(256)) * 9,
                          [300, 400], 2)
    echo = split_message(3, encode_command(CEchoRQ(2)), None, [100], 1)
    return encode_pdu(make_rq(1024)) + store + echo + encode_pdu(ReleaseRQ())


def _session_to_requestor() -> bytes:
    response = encode_command(CStoreRSP(1, CT, "1.2.3.4", 0))
    return (encode_pdu(make_ac(1024)) + split_message(1, response, None, [64], 1)
            + encode_pdu(ReleaseRP()))


VALID_TO_ACCEPTOR = _session_to_acceptor()
# A peer sends nothing after its RQ before our AC: the drivers cut there first, so that
# mutations reach the data transfer states.
RQ_LENGTH = len(encode_pdu(make_rq(1024)))
VALID_TO_REQUESTOR = _session_to_requestor()


def _answer(engine: Association, events: list[object]) -> None:
    """Play a cooperative peer: accept, answer commands, agree to release."""
    for event in events:
        if isinstance(event, AssociationRequested):
            engine.send(make_ac(1024))
        elif isinstance(event, ReleaseRequested) and not event.collision:
            engine.send(ReleaseRP())
        elif isinstance(event, CommandReceived) and event.context_id in engine.accepted:
            command = event.command
            if isinstance(command, CEchoRQ):
                engine.send(SendCommand(event.context_id, CEchoRSP(command.message_id, 0)))


def _drive(engine: Association, data: bytes, cuts: list[int]) -> None:
    pos = 0
    for size in [*cuts, len(data)]:
        piece, pos = data[pos : pos + size], pos + size
        if not piece or engine.should_close:
            break
        with contextlib.suppress(ProtocolError):
            _answer(engine, list(engine.receive_data(piece)))
        assert engine.buffered <= BOUND
    if not engine.should_close:
        with contextlib.suppress(ProtocolError):
            engine.receive_data(b"")
        assert engine.should_close


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        if not out:
            break
        i = where % len(out)
        if kind == 0:
            out[i] = value
        elif kind == 1:
            out.insert(i, value)
        elif kind == 2:
            del out[i]
        else:
            del out[i:]
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)),
                 min_size=1, max_size=8)
CUTS = st.lists(st.integers(1, 4096), max_size=40)


@FUZZ
@given(data=st.binary(max_size=4096), cuts=CUTS)
def test_arbitrary_bytes_to_a_fresh_acceptor(data: bytes, cuts: list[int]) -> None:
    _drive(Association.acceptor(**LIMITS), data, cuts)


@FUZZ
@given(data=st.binary(max_size=4096), cuts=CUTS)
def test_arbitrary_bytes_to_an_established_acceptor(data: bytes, cuts: list[int]) -> None:
    _, scp = associated(1024, 1024, **LIMITS)
    _drive(scp, data, cuts)


@FUZZ
@given(edits=EDITS, cuts=CUTS)
def test_mutated_sessions_to_an_acceptor(edits: list[tuple[int, int, int]],
                                         cuts: list[int]) -> None:
    _drive(Association.acceptor(**LIMITS), _mutate(VALID_TO_ACCEPTOR, edits), [RQ_LENGTH, *cuts])


@FUZZ
@given(edits=EDITS, cuts=CUTS)
def test_mutated_sessions_to_a_requestor(edits: list[tuple[int, int, int]],
                                         cuts: list[int]) -> None:
    scu = Association.requestor(**LIMITS)
    scu.send(make_rq(1024))
    data = _mutate(VALID_TO_REQUESTOR, edits)
    pos = 0
    for size in [*cuts, len(data)]:
        piece, pos = data[pos : pos + size], pos + size
        if not piece or scu.should_close:
            break
        try:
            for event in scu.receive_data(piece):
                if isinstance(event, CommandReceived) and scu.state.name == "STA6":
                    scu.send(SendData(1, b"", True))
        except ProtocolError:
            pass
        assert scu.buffered <= BOUND


def test_the_valid_sessions_are_valid() -> None:
    """The sessions mutated above are complete and correct before mutation."""
    scp = Association.acceptor(**LIMITS)
    seen = []
    for piece in (VALID_TO_ACCEPTOR[:RQ_LENGTH], VALID_TO_ACCEPTOR[RQ_LENGTH:]):
        events = scp.receive_data(piece)
        seen += [type(e).__name__ for e in events]
        _answer(scp, list(events))
    assert seen[0] == "AssociationRequested" and seen[-1] == "ReleaseRequested"
    assert seen.count("CommandReceived") == 2 and seen[-2] == "CommandReceived"
    assert scp.state.name == "STA13"
    scu = Association.requestor(**LIMITS)
    scu.send(make_rq(1024))
    events = scu.receive_data(VALID_TO_REQUESTOR[:-10])
    scu.send(ReleaseRQ())
    events += scu.receive_data(VALID_TO_REQUESTOR[-10:])
    assert [type(e).__name__ for e in events] == [
        "AssociationAccepted", "CommandReceived", "ReleaseConfirmed"]
