"""router/dicom/engine: the DICOM upper layer and DIMSE command sets without I/O.

Shaped like h11: `Association.receive_data(bytes) -> [events]`, `Association.send(value)
-> bytes`, the PS3.8 state table as data (states.py), no sockets, threads or clocks. Its
per-PDU and per-message path imports neither pynetdicom nor pydicom (import-linter checks).
See docs/architecture.md, "router/dicom/engine: the protocol without I/O".
"""

from router.dicom.engine.associate import (
    DICOM_APPLICATION_CONTEXT,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PresentationContextAC,
    PresentationContextRQ,
)
from router.dicom.engine.association import Association, Role
from router.dicom.engine.dimse import (
    CEchoRQ,
    CEchoRSP,
    Command,
    CStoreRQ,
    CStoreRSP,
    OtherCommand,
    decode_command,
    encode_command,
)
from router.dicom.engine.errors import (
    AbortReason,
    AbortSource,
    DecodeError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from router.dicom.engine.events import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    CommandReceived,
    ConnectionClosed,
    DataFragment,
    Event,
    ProviderAborted,
    ReleaseConfirmed,
    ReleaseRequested,
    SendCommand,
    SendData,
    TimedOut,
)
from router.dicom.engine.pdus import Abort, ReleaseRP, ReleaseRQ
from router.dicom.engine.states import State
from router.dicom.engine.user_info import (
    ExtendedNegotiation,
    RoleSelection,
    UserIdentityRQ,
    UserInformation,
)

__all__ = [
    "DICOM_APPLICATION_CONTEXT", "Abort", "AbortReason", "AbortSource", "Aborted",
    "AssociateAC", "AssociateRJ", "AssociateRQ", "Association", "AssociationAccepted",
    "AssociationRejected", "AssociationRequested", "CEchoRQ", "CEchoRSP", "CStoreRQ",
    "CStoreRSP", "Command", "CommandReceived", "ConnectionClosed", "DataFragment",
    "DecodeError", "Event", "ExtendedNegotiation", "LocalProtocolError", "OtherCommand",
    "PresentationContextAC", "PresentationContextRQ", "ProtocolError", "ProviderAborted",
    "ReleaseConfirmed", "ReleaseRP", "ReleaseRQ", "ReleaseRequested", "RemoteProtocolError",
    "Role", "RoleSelection", "SendCommand", "SendData", "State", "TimedOut", "UserIdentityRQ",
    "UserInformation", "decode_command", "encode_command",
]
