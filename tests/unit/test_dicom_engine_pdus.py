"""router/dicom/engine PDU codecs: round trips of every PDU type and user-information item,
and agreement with pynetdicom's own encoders and decoders in both directions."""

from __future__ import annotations

import pytest
from pynetdicom import pdu as pn_pdu
from pynetdicom import pdu_primitives as prim
from pynetdicom.presentation import PresentationContext

from router.dicom.engine import (
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    DecodeError,
    ExtendedNegotiation,
    PresentationContextAC,
    PresentationContextRQ,
    ReleaseRP,
    ReleaseRQ,
    RoleSelection,
    UserIdentityRQ,
    UserInformation,
)
from router.dicom.engine.pdus import PDU_HEADER, Pdu, decode_pdu, encode_pdu
from router.dicom.engine.user_info import decode_user_information

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"

FULL_INFO = UserInformation(
    max_length=131072,
    implementation_class_uid="1.2.826.0.1.3680043.9.7156.1",
    implementation_version_name="ENGINE_13",
    async_window=(3, 2),
    roles=(RoleSelection(CT, True, False), RoleSelection(MR, False, True)),
    extended=(ExtendedNegotiation(CT, b"\x01\x00\x01\x00"),),
    identity=UserIdentityRQ(2, True, b"alice", b"s3cret"),
)
RQ = AssociateRQ(
    "ROUTER", "MODALITY",
    (PresentationContextRQ(1, CT, (EXPLICIT, IMPLICIT)), PresentationContextRQ(3, MR, (IMPLICIT,))),
    FULL_INFO,
)
AC = AssociateAC(
    "ROUTER", "MODALITY",
    (PresentationContextAC(1, 0, EXPLICIT), PresentationContextAC(3, 4, ""),
     PresentationContextAC(5, 1, ""), PresentationContextAC(7, 2, ""),
     PresentationContextAC(9, 3, "")),
    UserInformation(max_length=65536, implementation_class_uid="1.2.3.4",
                    implementation_version_name="X", async_window=(1, 1),
                    roles=(RoleSelection(CT, True, True),), identity_response=b"token"),
)
SMALL: list[Pdu] = [AssociateRJ(1, 1, 3), AssociateRJ(2, 3, 1), ReleaseRQ(), ReleaseRP(),
                    Abort(0, 0), Abort(2, 6)]


def _decode(data: bytes) -> Pdu:
    pdu_type, length = PDU_HEADER.unpack_from(data)
    assert length == len(data) - 6
    return decode_pdu(pdu_type, data[6:])


@pytest.mark.parametrize("pdu", [RQ, AC, *SMALL], ids=lambda p: type(p).__name__)
def test_every_pdu_round_trips(pdu: Pdu) -> None:
    assert _decode(encode_pdu(pdu)) == pdu


@pytest.mark.parametrize("info", [
    UserInformation(max_length=0),
    UserInformation(max_length=16384, implementation_class_uid="1.2"),
    UserInformation(max_length=1, implementation_version_name=""),
    UserInformation(max_length=1, async_window=(0, 0)),
    UserInformation(max_length=1, roles=(RoleSelection("1.2.3", False, False),)),
    UserInformation(max_length=1, extended=(ExtendedNegotiation("1.2.3", b""),)),
    UserInformation(max_length=1, identity=UserIdentityRQ(1, False, b"bob")),
    UserInformation(max_length=1, identity=UserIdentityRQ(5, True, b"x" * 3000, b"")),
    UserInformation(max_length=1, identity_response=b""),
    UserInformation(max_length=1, other=((0x57, b"\x00\x03abc"),)),
], ids=lambda i: str(i)[:60])
def test_each_user_information_item_round_trips(info: UserInformation) -> None:
    rq = AssociateRQ("A", "B", (PresentationContextRQ(1, CT, (IMPLICIT,)),), info)
    assert _decode(encode_pdu(rq)) == rq


# --- agreement with pynetdicom ------------------------------------------------------------


def _pn_user_info(info: UserInformation) -> list[object]:
    items: list[object] = []
    item = prim.MaximumLengthNotification()
    item.maximum_length_received = info.max_length
    items.append(item)
    if info.implementation_class_uid:
        uid = prim.ImplementationClassUIDNotification()
        uid.implementation_class_uid = info.implementation_class_uid
        items.append(uid)
    if info.implementation_version_name:
        name = prim.ImplementationVersionNameNotification()
        name.implementation_version_name = info.implementation_version_name
        items.append(name)
    if info.async_window:
        window = prim.AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = info.async_window[0]
        window.maximum_number_operations_performed = info.async_window[1]
        items.append(window)
    for role in info.roles:
        sel = prim.SCP_SCU_RoleSelectionNegotiation()
        sel.sop_class_uid = role.sop_class_uid
        sel.scu_role, sel.scp_role = role.scu_role, role.scp_role
        items.append(sel)
    for ext in info.extended:
        neg = prim.SOPClassExtendedNegotiation()
        neg.sop_class_uid = ext.sop_class_uid
        neg.service_class_application_information = ext.info
        items.append(neg)
    if info.identity:
        ident = prim.UserIdentityNegotiation()
        ident.user_identity_type = info.identity.identity_type
        ident.positive_response_requested = info.identity.positive_response_requested
        ident.primary_field = info.identity.primary
        ident.secondary_field = info.identity.secondary
        items.append(ident)
    if info.identity_response is not None:
        resp = prim.UserIdentityNegotiation()
        resp.server_response = info.identity_response
        items.append(resp)
    return items


def _pn_associate(pdu: AssociateRQ | AssociateAC) -> bytes:
    primitive = prim.A_ASSOCIATE()
    primitive.application_context_name = pdu.application_context
    primitive.calling_ae_title = pdu.calling_ae
    primitive.called_ae_title = pdu.called_ae
    contexts = []
    for ctx in pdu.contexts:
        pc = PresentationContext()
        pc.context_id = ctx.context_id
        if isinstance(ctx, PresentationContextRQ):
            pc.abstract_syntax = ctx.abstract_syntax
            pc.transfer_syntax = list(ctx.transfer_syntaxes)
        else:
            pc.result = ctx.result
            pc.transfer_syntax = [ctx.transfer_syntax or IMPLICIT]
        contexts.append(pc)
    primitive.user_information = _pn_user_info(pdu.user_info)  # type: ignore[assignment]
    if isinstance(pdu, AssociateRQ):
        primitive.presentation_context_definition_list = contexts
        out: pn_pdu.PDU = pn_pdu.A_ASSOCIATE_RQ()
    else:
        primitive.presentation_context_definition_results_list = contexts
        primitive.result = 0
        out = pn_pdu.A_ASSOCIATE_AC()
    out.from_primitive(primitive)  # type: ignore[attr-defined]
    return bytes(out.encode())


@pytest.mark.parametrize("pdu", [RQ, AC], ids=["RQ", "AC"])
def test_pynetdicom_encoded_associate_decodes_to_the_same_values(pdu: Pdu) -> None:
    assert isinstance(pdu, AssociateRQ | AssociateAC)
    assert _decode(_pn_associate(pdu)) == pdu


def test_our_associate_rq_decodes_in_pynetdicom() -> None:
    decoded = pn_pdu.A_ASSOCIATE_RQ()
    decoded.decode(encode_pdu(RQ))
    assert decoded.called_ae_title == "ROUTER" and decoded.calling_ae_title == "MODALITY"
    assert decoded.application_context_name == RQ.application_context
    contexts = [(c.context_id, c.abstract_syntax, list(c.transfer_syntax))
                for c in decoded.presentation_context]
    assert contexts == [(1, CT, [EXPLICIT, IMPLICIT]), (3, MR, [IMPLICIT])]
    user = decoded.user_information
    assert user.maximum_length == 131072
    assert user.implementation_class_uid == FULL_INFO.implementation_class_uid
    assert user.implementation_version_name == "ENGINE_13"
    assert user.async_ops_window is not None
    assert (user.async_ops_window.maximum_number_operations_invoked,
            user.async_ops_window.maximum_number_operations_performed) == (3, 2)
    assert {uid: (r.scu_role, r.scp_role) for uid, r in user.role_selection.items()} == {
        CT: (True, False), MR: (False, True)}
    assert user.user_identity is not None
    assert (user.user_identity.user_identity_type, user.user_identity.primary_field,
            user.user_identity.secondary_field) == (2, b"alice", b"s3cret")
    assert user.ext_neg is not None
    assert [(e.sop_class_uid, e.service_class_application_information)
            for e in user.ext_neg] == [(CT, b"\x01\x00\x01\x00")]


def test_our_associate_ac_decodes_in_pynetdicom() -> None:
    decoded = pn_pdu.A_ASSOCIATE_AC()
    decoded.decode(encode_pdu(AC))
    results = [(c.context_id, c.result) for c in decoded.presentation_context]
    assert results == [(1, 0), (3, 4), (5, 1), (7, 2), (9, 3)]
    assert decoded.presentation_context[0].transfer_syntax == EXPLICIT
    assert decoded.user_information.maximum_length == 65536
    assert decoded.user_information.user_identity is not None
    assert decoded.user_information.user_identity.server_response == b"token"


@pytest.mark.parametrize("pdu", SMALL, ids=lambda p: repr(p))
def test_small_pdus_agree_with_pynetdicom(pdu: Pdu) -> None:
    theirs: pn_pdu.PDU
    if isinstance(pdu, AssociateRJ):
        theirs = pn_pdu.A_ASSOCIATE_RJ()
        theirs.result, theirs.source, theirs.reason_diagnostic = pdu.result, pdu.source, pdu.reason
    elif isinstance(pdu, Abort):
        theirs = pn_pdu.A_ABORT_RQ()
        theirs.source, theirs.reason_diagnostic = pdu.source, pdu.reason
    else:
        theirs = pn_pdu.A_RELEASE_RQ() if isinstance(pdu, ReleaseRQ) else pn_pdu.A_RELEASE_RP()
    assert encode_pdu(pdu) == theirs.encode()
    assert _decode(theirs.encode()) == pdu


def test_unknown_pdu_type_is_unrecognized() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_pdu(0x09, b"\x00" * 4)
    assert caught.value.reason == 1


@pytest.mark.parametrize("body", [b"", b"\x00" * 67, encode_pdu(RQ)[6:-3]])
def test_truncated_associate_rq_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_pdu(0x01, body)


@pytest.mark.parametrize("sub_item", [b"\x57\x00\x00\x00",
                                      b"\x54\x00\x00\x05\x00\x011\x01\x01",
                                      b"\x56\x00\x00\x03\x00\x011"])
def test_a_user_information_item_packed_with_sub_items_is_refused(sub_item: bytes) -> None:
    """A hostile RQ may fill its 256 KiB with tiny sub-items: the association kept every
    one as an object for its life (4.4 MB per association with contexts, below). PS3.7
    Annex D defines one per SOP class, and a request proposes 128 at most."""
    head = b"\x51\x00\x00\x04\x00\x00\x40\x00"
    assert decode_user_information(head + sub_item * 128).max_length == 16384
    with pytest.raises(DecodeError, match="more than 128"):
        decode_user_information(head + sub_item * 60_000)


def _rq_with(contexts: list[PresentationContextRQ]) -> bytes:
    return encode_pdu(AssociateRQ("ROUTER", "MODALITY", tuple(contexts), FULL_INFO))[6:]


def test_a_request_proposes_at_most_128_contexts_under_odd_distinct_ids() -> None:
    """PS3.8 9.3.2.2: context IDs are odd, 1 to 255. A request of 13,008 contexts held 4.4 MB
    for the association's life."""
    most = [PresentationContextRQ(i, CT, (EXPLICIT,)) for i in range(1, 256, 2)]
    assert len(decode_pdu(0x01, _rq_with(most)).contexts) == 128  # type: ignore[union-attr]
    with pytest.raises(DecodeError, match="more than 128"):
        decode_pdu(0x01, _rq_with([*most, PresentationContextRQ(1, MR, (EXPLICIT,))]))
    for ids in [(1, 2), (1, 3, 1)]:
        with pytest.raises(DecodeError, match="odd and distinct"):
            decode_pdu(0x01, _rq_with([PresentationContextRQ(i, CT, (EXPLICIT,)) for i in ids]))


def test_a_context_proposes_at_most_64_transfer_syntaxes() -> None:
    syntaxes = tuple(f"1.2.840.10008.1.2.{n}" for n in range(65))
    assert decode_pdu(0x01, _rq_with([PresentationContextRQ(1, CT, syntaxes[:64])]))
    with pytest.raises(DecodeError, match="more than 64 transfer syntaxes"):
        decode_pdu(0x01, _rq_with([PresentationContextRQ(1, CT, syntaxes)]))
