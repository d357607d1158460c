"""router/acceptor/negotiation.py: what the engine side of the acceptor answers to an
A-ASSOCIATE-RQ (pure values in, an AssociateAC out; the AC is also put through the engine's
codec so that what is asserted is what would go on the wire)."""

from __future__ import annotations

from router.acceptor.negotiation import AcceptorOffer, accept
from router.dicom.engine import (
    AssociateAC,
    AssociateRQ,
    Association,
    AssociationAccepted,
    PresentationContextRQ,
    RoleSelection,
    UserIdentityRQ,
    UserInformation,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND: relayed
UNKNOWN = "1.2.3.4.5.6"  # no service of the router's
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
DEFLATED = "1.2.840.10008.1.2.1.99"

OFFER = AcceptorOffer(
    ae_title="ROUTER", max_pdu=65536, storage_classes=frozenset({CT, MR}),
    # A frozenset has no order: the requestor's order must decide, whatever this holds.
    transfer_syntaxes=frozenset({IMPLICIT, EXPLICIT, JPEG_LOSSLESS}),
    relayed_classes=frozenset({STUDY_FIND}), relayed_syntaxes=frozenset({IMPLICIT, EXPLICIT}),
    implementation_class_uid="1.2.826.0.1.3680043.9.9999.1", implementation_version="ROUTER_1",
)


def rq(*contexts: tuple[int, str, tuple[str, ...]], user_info: UserInformation | None = None,
       ) -> AssociateRQ:
    info = user_info or UserInformation(max_length=16384, implementation_class_uid="1.2.3")
    return AssociateRQ("ROUTER", "MODALITY",
                       tuple(PresentationContextRQ(*ctx) for ctx in contexts), info)


def on_the_wire(request: AssociateRQ, ac: AssociateAC) -> AssociateAC:
    """The AC as a requestor decodes it (the codec must carry every answered field)."""
    peer = Association.requestor()
    acceptor = Association.acceptor()
    acceptor.receive_data(peer.send(request))
    events = peer.receive_data(acceptor.send(ac))
    assert len(events) == 1 and isinstance(events[0], AssociationAccepted)
    return events[0].ac


def test_the_requestors_first_supported_syntax_wins_whatever_the_offer_order() -> None:
    for syntaxes, expected in [((EXPLICIT, IMPLICIT), EXPLICIT), ((IMPLICIT, EXPLICIT), IMPLICIT),
                               ((DEFLATED, JPEG_LOSSLESS, IMPLICIT), JPEG_LOSSLESS)]:
        request = rq((1, CT, syntaxes))
        ac = on_the_wire(request, accept(request, OFFER))
        assert [(c.context_id, c.result, c.transfer_syntax) for c in ac.contexts] == [
            (1, 0, expected)]


def test_unsupported_abstract_syntax_is_answered_3_not_dropped() -> None:
    request = rq((1, "1.2.3.4.5.6", (EXPLICIT,)), (3, CT, (EXPLICIT,)))
    ac = on_the_wire(request, accept(request, OFFER))
    assert [(c.context_id, c.result) for c in ac.contexts] == [(1, 3), (3, 0)]


def test_no_common_transfer_syntax_is_answered_4() -> None:
    request = rq((1, CT, (DEFLATED,)), (3, VERIFICATION, (IMPLICIT,)))
    ac = on_the_wire(request, accept(request, OFFER))
    assert [(c.context_id, c.result) for c in ac.contexts] == [(1, 4), (3, 0)]
    assert ac.accepted() == {3: IMPLICIT}


def test_relayed_services_are_accepted_in_little_endian_only() -> None:
    request = rq((1, STUDY_FIND, (JPEG_LOSSLESS, EXPLICIT)), (3, STUDY_FIND, (JPEG_LOSSLESS,)),
                 (5, CT, (JPEG_LOSSLESS,)), (7, "1.2.3.4.5.6", (IMPLICIT,)))
    ac = on_the_wire(request, accept(request, OFFER))
    # A query's identifier is small: the little endian syntaxes are all the relay needs,
    # while storage keeps the sender's syntax (and an unknown SOP class is answered 3).
    assert [(c.context_id, c.result) for c in ac.contexts] == [(1, 0), (3, 4), (5, 0), (7, 3)]
    assert ac.accepted() == {1: EXPLICIT, 5: JPEG_LOSSLESS}


def test_role_selection_is_echoed_only_for_supported_sop_classes() -> None:
    roles = (RoleSelection(CT, False, True), RoleSelection(UNKNOWN, True, False),
             RoleSelection(MR, True, True))
    info = UserInformation(max_length=16384, implementation_class_uid="1.2.3", roles=roles)
    request = rq((1, CT, (EXPLICIT,)), (3, MR, (EXPLICIT,)), user_info=info)
    ac = on_the_wire(request, accept(request, OFFER))
    assert ac.user_info.roles == (RoleSelection(CT, False, True), RoleSelection(MR, True, True))


def test_role_selection_is_answered_once_per_sop_class_proposed() -> None:
    """A request that repeated one role item 1,985 times got an AC too large to encode (and
    a traceback in the log; the engine now refuses more than 128): one answer per SOP class,
    and none for a class no context proposes."""
    roles = (*[RoleSelection(CT, True, True)] * 120, RoleSelection(MR, True, False))
    info = UserInformation(max_length=16384, implementation_class_uid="1.2.3", roles=roles)
    request = rq((1, CT, (EXPLICIT,)), user_info=info)
    ac = on_the_wire(request, accept(request, OFFER))
    assert ac.user_info.roles == (RoleSelection(CT, True, True),)


def test_no_role_selection_proposed_none_answered() -> None:
    request = rq((1, CT, (EXPLICIT,)))
    assert on_the_wire(request, accept(request, OFFER)).user_info.roles == ()


def test_async_window_answered_one_one_only_when_asked() -> None:
    asked = rq((1, CT, (EXPLICIT,)), user_info=UserInformation(
        max_length=16384, implementation_class_uid="1.2.3", async_window=(8, 4)))
    assert on_the_wire(asked, accept(asked, OFFER)).user_info.async_window == (1, 1)
    silent = rq((1, CT, (EXPLICIT,)))
    assert on_the_wire(silent, accept(silent, OFFER)).user_info.async_window is None


def test_max_length_and_implementation_are_advertised() -> None:
    request = rq((1, CT, (EXPLICIT,)))
    info = on_the_wire(request, accept(request, OFFER)).user_info
    assert info.max_length == OFFER.max_pdu
    assert info.implementation_class_uid == OFFER.implementation_class_uid
    assert info.implementation_version_name == OFFER.implementation_version


def test_ae_titles_and_application_context_come_back_as_requested() -> None:
    request = rq((1, CT, (EXPLICIT,)))
    ac = on_the_wire(request, accept(request, OFFER))
    assert (ac.called_ae, ac.calling_ae) == ("ROUTER", "MODALITY")
    assert ac.application_context == "1.2.840.10008.3.1.1.1"


def test_contexts_answered_in_proposal_order_with_their_ids() -> None:
    request = rq((7, MR, (EXPLICIT,)), (1, UNKNOWN, (IMPLICIT,)), (255, CT, (DEFLATED,)),
                 (3, VERIFICATION, (IMPLICIT,)))
    ac = on_the_wire(request, accept(request, OFFER))
    assert [(c.context_id, c.result) for c in ac.contexts] == [(7, 0), (1, 3), (255, 4),
                                                              (3, 0)]


def test_one_sop_class_proposed_twice_is_answered_per_context() -> None:
    # What storescu -xs style senders do: one context per transfer syntax of the class.
    request = rq((1, CT, (JPEG_LOSSLESS,)), (3, CT, (IMPLICIT, EXPLICIT)), (5, CT, (DEFLATED,)))
    ac = on_the_wire(request, accept(request, OFFER))
    assert [(c.context_id, c.result, c.transfer_syntax) for c in ac.contexts] == [
        (1, 0, JPEG_LOSSLESS), (3, 0, IMPLICIT), (5, 4, "")]


def test_a_user_identity_gets_its_positive_response_when_asked_for_one() -> None:
    """PS3.7 D.3.3.7: an accepted username (with or without passcode) whose requester asked
    for a positive response gets an empty server response (0x59); unasked, none."""
    def answer(kind: int, wants: bool) -> bytes | None:
        info = UserInformation(max_length=16384, implementation_class_uid="1.2.3",
                               identity=UserIdentityRQ(kind, wants, b"alice", b"secret"))
        request = rq((1, CT, (EXPLICIT,)), user_info=info)
        return on_the_wire(request, accept(request, OFFER)).user_info.identity_response

    assert answer(2, True) == b"" and answer(1, True) == b""
    assert answer(2, False) is None
    assert answer(5, True) is None  # a JWT's response would be a token the router has not
    request = rq((1, CT, (EXPLICIT,)))
    assert on_the_wire(request, accept(request, OFFER)).user_info.identity_response is None
