"""router/dicom/engine state machine: every PDU in every state gets PS3.8's answer (Table
9-10, written out here independently of states.py), release collision, ARTIM, local misuse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from router.dicom.engine import (
    Abort,
    Aborted,
    AssociateRJ,
    Association,
    AssociationRejected,
    AssociationRequested,
    CEchoRQ,
    ConnectionClosed,
    LocalProtocolError,
    ProviderAborted,
    ReleaseConfirmed,
    ReleaseRequested,
    ReleaseRP,
    ReleaseRQ,
    RemoteProtocolError,
    SendCommand,
    State,
    TimedOut,
)
from router.dicom.engine.pdus import encode_pdu

from .engine_helpers import associated, make_ac, make_rq, pdata, pdv


def _sta2() -> Association:
    return Association.acceptor()


def _sta3() -> Association:
    scp = Association.acceptor()
    scp.receive_data(encode_pdu(make_rq()))
    return scp


def _sta5() -> Association:
    scu = Association.requestor()
    scu.send(make_rq())
    return scu


def _sta6() -> Association:
    return associated()[1]


def _sta7() -> Association:
    scu = associated()[0]
    scu.send(ReleaseRQ())
    return scu


def _sta8() -> Association:
    scp = associated()[1]
    scp.receive_data(encode_pdu(ReleaseRQ()))
    return scp


def _sta9() -> Association:
    scu = _sta7()
    scu.receive_data(encode_pdu(ReleaseRQ()))
    return scu


def _sta10() -> Association:
    scp = associated()[1]
    scp.send(ReleaseRQ())
    scp.receive_data(encode_pdu(ReleaseRQ()))
    return scp


def _sta11() -> Association:
    scu = _sta9()
    scu.send(ReleaseRP())
    return scu


def _sta12() -> Association:
    scp = _sta10()
    scp.receive_data(encode_pdu(ReleaseRP()))
    return scp


def _sta13() -> Association:
    scp = _sta8()
    scp.send(ReleaseRP())
    return scp


BUILDERS: dict[State, Callable[[], Association]] = {
    State.STA2: _sta2, State.STA3: _sta3, State.STA5: _sta5, State.STA6: _sta6,
    State.STA7: _sta7, State.STA8: _sta8, State.STA9: _sta9, State.STA10: _sta10,
    State.STA11: _sta11, State.STA12: _sta12, State.STA13: _sta13,
}

PDUS = {
    "RQ": encode_pdu(make_rq()), "AC": encode_pdu(make_ac()),
    "RJ": encode_pdu(AssociateRJ(1, 1, 1)), "DATA": pdata(pdv(1, 0x03, b"")),
    "RELEASE-RQ": encode_pdu(ReleaseRQ()), "RELEASE-RP": encode_pdu(ReleaseRP()),
    "ABORT": encode_pdu(Abort(0, 0)), "UNKNOWN": b"\x0a\x00\x00\x00\x00\x00",
}

# (PDU, state) -> state after it, for the PDUs a state expects (PS3.8 Table 9-10). A-ABORT
# is always taken (Sta1 after it). Anything else: AA-1 in Sta2 (A-ABORT, service-user
# source), AA-6 ignore in Sta13 (AA-7 A-ABORT for an RQ or an unknown PDU there), AA-8
# (A-ABORT, service-provider source) in every other state.
EXPECTED = {
    ("RQ", State.STA2): State.STA3,
    ("AC", State.STA5): State.STA6,
    ("RJ", State.STA5): State.STA1,
    ("RELEASE-RQ", State.STA6): State.STA8,
    ("RELEASE-RQ", State.STA7): State.STA9,  # collision, requestor
    ("RELEASE-RP", State.STA7): State.STA1,
    ("RELEASE-RP", State.STA10): State.STA12,
    ("RELEASE-RP", State.STA11): State.STA1,
}


# P-DATA in Sta6/Sta7 is data transfer: test_dicom_engine_stream.py.
CASES = [(state, name) for state in BUILDERS for name in PDUS
         if not (name == "DATA" and state in (State.STA6, State.STA7))]


@pytest.mark.parametrize(("state", "name"), CASES, ids=lambda v: getattr(v, "name", v))
def test_each_pdu_in_each_state(state: State, name: str) -> None:
    engine = BUILDERS[state]()
    assert engine.state is state
    wire = PDUS[name]
    if (name, state) in EXPECTED:
        engine.receive_data(wire)
        assert engine.state is EXPECTED[(name, state)]
    elif name == "ABORT":
        assert engine.receive_data(wire) == [Aborted(0, 0)]
        assert engine.should_close
    elif state is State.STA13 and name not in ("RQ", "UNKNOWN"):
        assert engine.receive_data(wire) == []  # AA-6: ignored
        assert engine.state is State.STA13
    else:
        with pytest.raises(RemoteProtocolError) as caught:
            engine.receive_data(wire)
        error = caught.value
        if state is State.STA2:
            assert (error.abort_source, error.abort_reason) == (0, 0)
        else:
            assert error.abort_source == 2
            assert error.abort_reason == (1 if name == "UNKNOWN" else 2)
        assert error.to_send == encode_pdu(Abort(error.abort_source, error.abort_reason))
        assert engine.state is State.STA13 and engine.artim_running


def test_release_collision_both_sides() -> None:
    scu, scp = associated()
    rq_from_scu, rq_from_scp = scu.send(ReleaseRQ()), scp.send(ReleaseRQ())
    assert scu.receive_data(rq_from_scp) == [ReleaseRequested(collision=True)]
    assert scp.receive_data(rq_from_scu) == [ReleaseRequested(collision=True)]
    assert (scu.state, scp.state) == (State.STA9, State.STA10)
    with pytest.raises(LocalProtocolError):
        scp.send(ReleaseRP())  # the acceptor answers only after the requestor's RP
    assert scp.receive_data(scu.send(ReleaseRP())) == [ReleaseConfirmed()]
    assert scu.receive_data(scp.send(ReleaseRP())) == [ReleaseConfirmed()]
    assert scu.should_close and scp.state is State.STA13
    assert scp.receive_data(b"") == [ConnectionClosed()]


def test_artim_runs_before_the_rq_and_after_the_rp() -> None:
    scp = Association.acceptor(artim_timeout=5.0)
    assert scp.artim_running and scp.artim_timeout == 5.0
    first = scp.artim_generation
    scp.receive_data(encode_pdu(make_rq()))
    assert not scp.artim_running
    assert scp.timer_expired(first) == []  # stopped: a late timer is ignored
    scp.send(make_ac())
    scp.receive_data(encode_pdu(ReleaseRQ()))
    scp.send(ReleaseRP())
    assert scp.artim_running and scp.artim_generation != first
    assert scp.timer_expired(first) == []  # stale generation
    assert scp.timer_expired(scp.artim_generation) == [TimedOut()]
    assert scp.should_close


def test_artim_expiry_before_any_rq() -> None:
    scp = Association.acceptor()
    assert scp.timer_expired() == [TimedOut()] and scp.should_close


def test_rejecting_starts_artim_and_waits_for_close() -> None:
    scp = _sta3()
    scp.send(AssociateRJ(1, 1, 7))
    assert scp.state is State.STA13 and scp.artim_running
    scu = _sta5()
    assert scu.receive_data(encode_pdu(AssociateRJ(1, 1, 7))) == [
        AssociationRejected(AssociateRJ(1, 1, 7))]
    assert scu.should_close


def test_an_rq_for_another_protocol_version_is_rejected_by_the_provider() -> None:
    wire = bytearray(encode_pdu(make_rq()))
    wire[7] = 2  # protocol version 2 only
    scp = Association.acceptor()
    with pytest.raises(RemoteProtocolError) as caught:
        scp.receive_data(bytes(wire))
    assert caught.value.to_send == encode_pdu(AssociateRJ(1, 2, 2))


def test_transport_loss_is_a_provider_abort() -> None:
    scu, scp = associated()
    assert scp.receive_data(b"") == [ProviderAborted("the peer closed the transport")]
    assert scu.transport_failed("reset") == [ProviderAborted("reset")]
    assert Association.acceptor().receive_data(b"") == [ConnectionClosed()]


def test_local_misuse_changes_nothing() -> None:
    scp = Association.acceptor()
    with pytest.raises(LocalProtocolError):
        scp.send(SendCommand(1, CEchoRQ(1)))
    with pytest.raises(LocalProtocolError):
        scp.send(ReleaseRQ())
    assert scp.state is State.STA2
    scu = Association.requestor(max_pdu_length=1000)
    with pytest.raises(LocalProtocolError):
        scu.send(make_rq(max_length=0))  # never advertise "no limit"
    with pytest.raises(LocalProtocolError):
        scu.send(make_rq(max_length=2000))  # nor more than we enforce
    assert scu.state is State.STA4
    scu.send(make_rq(max_length=1000))
    assert scu.state is State.STA5


def test_abort_in_every_established_state_and_before_the_rq_went_out() -> None:
    for state, build in BUILDERS.items():
        if state in (State.STA2, State.STA13):
            continue
        engine = build()
        assert engine.send(Abort(0, 0)) == encode_pdu(Abort(0, 0))
        assert engine.state is State.STA13 and engine.artim_running
    fresh = Association.requestor()
    assert fresh.send(Abort()) == b"" and fresh.should_close


def test_requested_event_carries_the_rq() -> None:
    scp = Association.acceptor()
    assert scp.receive_data(encode_pdu(make_rq())) == [AssociationRequested(make_rq())]


def test_an_ac_may_only_answer_proposed_contexts() -> None:
    scp = _sta3()
    bad = make_ac()
    bad = type(bad)(bad.called_ae, bad.calling_ae,
                    (*bad.contexts, type(bad.contexts[0])(9, 0, "1.2.840.10008.1.2")),
                    bad.user_info)
    with pytest.raises(LocalProtocolError):
        scp.send(bad)
    assert scp.state is State.STA3
    scu = _sta5()
    scu.receive_data(encode_pdu(bad))
    assert sorted(scu.accepted) == [1, 3]  # context 9 was never proposed: ignored


@pytest.mark.parametrize("max_length", [1, 6])
def test_a_peer_whose_maximum_pdu_cannot_carry_a_pdv_is_rejected_at_once(
        max_length: int) -> None:
    """Regression: a peer advertising 1..6 was accepted and the first answer to it raised a
    LocalProtocolError (logged with a traceback); 0 means no limit and stays accepted."""
    scp = Association.acceptor()
    with pytest.raises(RemoteProtocolError) as caught:
        scp.receive_data(encode_pdu(make_rq(max_length=max_length)))
    assert caught.value.to_send == encode_pdu(AssociateRJ(1, 1, 1))
    assert "too small" in caught.value.message and scp.state is State.STA13
    unlimited = Association.acceptor()
    rq = make_rq(max_length=16384)
    rq = replace(rq, user_info=replace(rq.user_info, max_length=0))
    assert unlimited.receive_data(encode_pdu(rq))[0] == AssociationRequested(rq)
