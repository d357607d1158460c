"""The acceptor's answer to an A-ASSOCIATE-RQ, without I/O: which presentation contexts it
takes, in which transfer syntax, with which roles and user information.

Who may associate at all (access rules, limits, user identity) is decided before this, by
router/acceptor/association_events.py; here only what the router can serve is negotiated.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.dicom.engine import (
    DICOM_APPLICATION_CONTEXT,
    AssociateAC,
    AssociateRQ,
    PresentationContextAC,
    RoleSelection,
    UserInformation,
)
from router.dicom.engine.associate import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    TRANSFER_SYNTAXES_NOT_SUPPORTED,
)
from router.dicom.engine.dimse import VERIFICATION

USERNAME, USERNAME_AND_PASSCODE = 1, 2  # User-Identity-Type (PS3.7 D.3.3.7)


@dataclass(frozen=True)
class AcceptorOffer:
    """What the acceptor serves: verification, storage (either role: a C-GET requester takes
    its instances back as the SCP) in any transfer syntax, and the relayed services
    (queries, retrieves, N-services: router/relay/) in the little endian syntaxes."""

    ae_title: str
    max_pdu: int  # the Maximum Length the router advertises for P-DATA-TF
    storage_classes: frozenset[str]
    transfer_syntaxes: frozenset[str]
    relayed_classes: frozenset[str]
    relayed_syntaxes: frozenset[str]
    implementation_class_uid: str
    implementation_version: str

    def supports(self, abstract_syntax: str) -> bool:
        return abstract_syntax == VERIFICATION or abstract_syntax in self.storage_classes \
            or abstract_syntax in self.relayed_classes

    def serves_relayed(self, abstract_syntax: str) -> bool:
        return abstract_syntax in self.relayed_classes

    def syntaxes(self, abstract_syntax: str) -> frozenset[str]:
        if abstract_syntax in self.relayed_classes:
            return self.relayed_syntaxes
        return self.transfer_syntaxes


def accept(rq: AssociateRQ, offer: AcceptorOffer) -> AssociateAC:
    """Per proposed context: the first transfer syntax *the sender* listed that the router
    supports, so that the router keeps (and forwards) the instance exactly as the sender
    has it; a context the router does not serve is answered, not dropped."""
    contexts = []
    for ctx in rq.contexts:
        if not offer.supports(ctx.abstract_syntax):
            contexts.append(PresentationContextAC(ctx.context_id, ABSTRACT_SYNTAX_NOT_SUPPORTED))
            continue
        ours = offer.syntaxes(ctx.abstract_syntax)
        syntax = next((ts for ts in ctx.transfer_syntaxes if ts in ours), "")
        result = ACCEPTANCE if syntax else TRANSFER_SYNTAXES_NOT_SUPPORTED
        contexts.append(PresentationContextAC(ctx.context_id, result, syntax))
    # Role selection: the router takes either role for what it serves, so it agrees to what
    # was proposed (PS3.7 D.3.3.4), once per SOP class proposed in a context; for other SOP
    # classes it answers nothing.
    proposed = {ctx.abstract_syntax for ctx in rq.contexts}
    answered: dict[str, RoleSelection] = {}
    for role in rq.user_info.roles:
        uid = role.sop_class_uid
        if uid in proposed and uid not in answered and offer.supports(uid):
            answered[uid] = RoleSelection(uid, role.scu_role, role.scp_role)
    roles = tuple(answered.values())
    # Asynchronous operations: one at a time (PS3.7 D.3.3.3), answered only when asked.
    window = (1, 1) if rq.user_info.async_window is not None else None
    info = UserInformation(max_length=offer.max_pdu,
                           implementation_class_uid=offer.implementation_class_uid,
                           implementation_version_name=offer.implementation_version,
                           async_window=window, roles=roles,
                           identity_response=identity_response(rq))
    return AssociateAC(rq.called_ae, rq.calling_ae, tuple(contexts), info,
                       DICOM_APPLICATION_CONTEXT, 1)


def identity_response(rq: AssociateRQ) -> bytes | None:
    """The User Identity server response (0x59) for an identity already accepted, when the
    requester asked for one (PS3.7 D.3.3.7): empty for a username, with or without passcode.
    Kerberos, SAML and JWT would need a ticket or token the router does not make: none, so
    a requester that insists finds out at association time, not later."""
    identity = rq.user_info.identity
    if identity is None or not identity.positive_response_requested:
        return None
    return b"" if identity.identity_type in (USERNAME, USERNAME_AND_PASSCODE) else None
