"""The PS3.8 association state machine (Tables 9-1..9-10) as data.

`TABLE[(event, state)]` names the action; `ACTIONS[action]` is its next state (None: the
action chooses, see the comments). A pair absent from the table is an illegal event: for a
PDU from the peer that is a protocol error (association.py answers with A-ABORT), for a
request from the local user a LocalProtocolError.

The engine is created after the transport exists, so Evt1/Evt2 (connect) and Evt5
(transport indication) happened before it: an acceptor starts in Sta2 with ARTIM running
(AE-5 done), a requestor in Sta4, where sending the A-ASSOCIATE-RQ is Evt2's AE-2.
"""

from __future__ import annotations

from enum import Enum, IntEnum


class State(IntEnum):
    STA1 = 1  # idle (transport closed or to be closed)
    STA2 = 2  # transport open, awaiting A-ASSOCIATE-RQ PDU (acceptor)
    STA3 = 3  # awaiting local A-ASSOCIATE response primitive (acceptor)
    STA4 = 4  # awaiting transport open to complete (requestor)
    STA5 = 5  # awaiting A-ASSOCIATE-AC or -RJ PDU (requestor)
    STA6 = 6  # association established, data transfer
    STA7 = 7  # awaiting A-RELEASE-RP PDU
    STA8 = 8  # awaiting local A-RELEASE response primitive
    STA9 = 9  # release collision, requestor side: awaiting A-RELEASE response primitive
    STA10 = 10  # release collision, acceptor side: awaiting A-RELEASE-RP PDU
    STA11 = 11  # release collision, requestor side: awaiting A-RELEASE-RP PDU
    STA12 = 12  # release collision, acceptor side: awaiting A-RELEASE response primitive
    STA13 = 13  # awaiting transport close (ARTIM running)


class Evt(IntEnum):
    ASSOCIATE_RQ_LOCAL = 1  # A-ASSOCIATE request (local user)
    TRANSPORT_CONFIRM = 2  # transport connect confirmation
    AC_PDU = 3
    RJ_PDU = 4
    TRANSPORT_INDICATION = 5
    RQ_PDU = 6
    ACCEPT_LOCAL = 7  # A-ASSOCIATE response primitive (accept)
    REJECT_LOCAL = 8  # A-ASSOCIATE response primitive (reject)
    PDATA_LOCAL = 9  # P-DATA request primitive
    PDATA_PDU = 10
    RELEASE_RQ_LOCAL = 11
    RELEASE_RQ_PDU = 12
    RELEASE_RP_PDU = 13
    RELEASE_RP_LOCAL = 14  # A-RELEASE response primitive
    ABORT_LOCAL = 15
    ABORT_PDU = 16
    TRANSPORT_CLOSED = 17
    ARTIM_EXPIRED = 18
    INVALID_PDU = 19  # unrecognized or invalid PDU received


class Action(Enum):
    AE2 = "send A-ASSOCIATE-RQ PDU"
    AE3 = "issue A-ASSOCIATE confirmation (accept)"
    AE4 = "issue A-ASSOCIATE confirmation (reject), close transport"
    AE6 = "stop ARTIM; RQ acceptable: indication (Sta3), else send RJ, start ARTIM (Sta13)"
    AE7 = "send A-ASSOCIATE-AC PDU"
    AE8 = "send A-ASSOCIATE-RJ PDU, start ARTIM"
    DT1 = "send P-DATA-TF PDU"
    DT2 = "issue P-DATA indication"
    AR1 = "send A-RELEASE-RQ PDU"
    AR2 = "issue A-RELEASE indication"
    AR3 = "issue A-RELEASE confirmation, close transport"
    AR4 = "send A-RELEASE-RP PDU, start ARTIM"
    AR5 = "stop ARTIM"
    AR6 = "issue P-DATA indication (while awaiting A-RELEASE-RP)"
    AR7 = "send P-DATA-TF PDU (after the peer asked to release)"
    AR8 = "release collision: indication; requestor -> Sta9, acceptor -> Sta10"
    AR9 = "send A-RELEASE-RP PDU (collision, requestor)"
    AR10 = "issue A-RELEASE confirmation (collision, acceptor)"
    AA1 = "send A-ABORT PDU (service-user source), start or restart ARTIM"
    AA2 = "stop ARTIM, close transport"
    AA3 = "issue A-ABORT (or A-P-ABORT) indication, close transport"
    AA4 = "issue A-P-ABORT indication"
    AA5 = "stop ARTIM"
    AA6 = "ignore PDU"
    AA7 = "send A-ABORT PDU"
    AA8 = "send A-ABORT PDU (service-provider source), A-P-ABORT indication, start ARTIM"


S = State
ACTIONS: dict[Action, State | None] = {
    Action.AE2: S.STA5, Action.AE3: S.STA6, Action.AE4: S.STA1, Action.AE6: None,
    Action.AE7: S.STA6, Action.AE8: S.STA13, Action.DT1: S.STA6, Action.DT2: S.STA6,
    Action.AR1: S.STA7, Action.AR2: S.STA8, Action.AR3: S.STA1, Action.AR4: S.STA13,
    Action.AR5: S.STA1, Action.AR6: S.STA7, Action.AR7: S.STA8, Action.AR8: None,
    Action.AR9: S.STA11, Action.AR10: S.STA12, Action.AA1: S.STA13, Action.AA2: S.STA1,
    Action.AA3: S.STA1, Action.AA4: S.STA1, Action.AA5: S.STA1, Action.AA6: S.STA13,
    Action.AA7: S.STA13, Action.AA8: S.STA13,
}

# States where the association exists or is being set up/released: an unexpected PDU there
# is AA-8 (Sta2 answers AA-1, Sta13 ignores most PDUs: AA-6).
_BUSY = (S.STA3, S.STA5, S.STA6, S.STA7, S.STA8, S.STA9, S.STA10, S.STA11, S.STA12)


def _row(event: Evt, default: Action, sta2: Action | None, sta13: Action | None,
         **overrides: Action) -> dict[tuple[Evt, State], Action]:
    row = {(event, state): default for state in _BUSY}
    if sta2 is not None:
        row[(event, S.STA2)] = sta2
    if sta13 is not None:
        row[(event, S.STA13)] = sta13
    for name, action in overrides.items():
        row[(event, State[name])] = action
    return row


A = Action
TABLE: dict[tuple[Evt, State], Action] = {
    (Evt.TRANSPORT_CONFIRM, S.STA4): A.AE2,
    # PDUs from the peer: each row is "AA-8 unless the state expects it".
    **_row(Evt.AC_PDU, A.AA8, A.AA1, A.AA6, STA5=A.AE3),
    **_row(Evt.RJ_PDU, A.AA8, A.AA1, A.AA6, STA5=A.AE4),
    **_row(Evt.RQ_PDU, A.AA8, A.AE6, A.AA7),
    **_row(Evt.PDATA_PDU, A.AA8, A.AA1, A.AA6, STA6=A.DT2, STA7=A.AR6),
    **_row(Evt.RELEASE_RQ_PDU, A.AA8, A.AA1, A.AA6, STA6=A.AR2, STA7=A.AR8),
    **_row(Evt.RELEASE_RP_PDU, A.AA8, A.AA1, A.AA6, STA7=A.AR3, STA10=A.AR10, STA11=A.AR3),
    **_row(Evt.ABORT_PDU, A.AA3, A.AA2, A.AA2),
    **_row(Evt.INVALID_PDU, A.AA8, A.AA1, A.AA7),
    # The transport closed: before the RQ, or after our RJ/RP/A-ABORT, that is normal.
    **_row(Evt.TRANSPORT_CLOSED, A.AA4, A.AA5, A.AR5, STA4=A.AA4),
    (Evt.ARTIM_EXPIRED, S.STA2): A.AA2,
    (Evt.ARTIM_EXPIRED, S.STA13): A.AA2,
    # Requests of the local user.
    (Evt.ACCEPT_LOCAL, S.STA3): A.AE7,
    (Evt.REJECT_LOCAL, S.STA3): A.AE8,
    (Evt.PDATA_LOCAL, S.STA6): A.DT1,
    (Evt.PDATA_LOCAL, S.STA8): A.AR7,
    (Evt.RELEASE_RQ_LOCAL, S.STA6): A.AR1,
    (Evt.RELEASE_RP_LOCAL, S.STA8): A.AR4,
    (Evt.RELEASE_RP_LOCAL, S.STA9): A.AR9,
    (Evt.RELEASE_RP_LOCAL, S.STA12): A.AR4,
    **_row(Evt.ABORT_LOCAL, A.AA1, None, None, STA4=A.AA2),
}


# --- what an unexpected PDU means, in an operator's words (log lines) -----------------------

_PDU_WORDS = {
    Evt.AC_PDU: "an A-ASSOCIATE-AC", Evt.RJ_PDU: "an A-ASSOCIATE-RJ",
    Evt.RQ_PDU: "an A-ASSOCIATE-RQ", Evt.PDATA_PDU: "P-DATA",
    Evt.RELEASE_RQ_PDU: "an A-RELEASE-RQ", Evt.RELEASE_RP_PDU: "an A-RELEASE-RP",
    Evt.ABORT_PDU: "an A-ABORT", Evt.INVALID_PDU: "an invalid PDU",
}
_NOT_YET = "before the association was accepted"
_COLLISION = "during a release collision"
_WHEN = {
    State.STA1: "with no association", State.STA2: _NOT_YET, State.STA3: _NOT_YET,
    State.STA4: "before the connection was open", State.STA5: _NOT_YET,
    State.STA6: "on an established association",
    State.STA7: "while awaiting the A-RELEASE-RP", State.STA8: "after the A-RELEASE-RQ",
    State.STA9: _COLLISION, State.STA10: _COLLISION, State.STA11: _COLLISION,
    State.STA12: _COLLISION, State.STA13: "after the association ended",
}
_ASSOCIATED = frozenset(s for s in State if s is State.STA3 or State.STA6 <= s < State.STA13)


def unexpected(evt: Evt, state: State) -> str:
    """'a second A-ASSOCIATE-RQ on an established association [RQ_PDU in STA6]': what
    happened, then the PS3.8 event and state for whoever reads the state table."""
    what = _PDU_WORDS.get(evt, evt.name)
    if evt is Evt.RQ_PDU and state in _ASSOCIATED:
        what = "a second A-ASSOCIATE-RQ"
    return f"{what} {_WHEN[state]} [{evt.name} in {state.name}]"
