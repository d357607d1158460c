"""Write router/dicom/uid_tables.py: the UIDs the acceptor negotiates, as pynetdicom and
pydicom list them, as plain strings (so that the acceptor starts without importing either).

    .venv/bin/python scripts/gen_uid_tables.py > router/dicom/uid_tables.py

tests/unit/test_uid_tables.py fails when the file is not what this writes today (a library
upgrade that adds classes or syntaxes): regenerate, and review the diff.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

from pydicom.uid import UID, AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts
from pynetdicom import presentation as contexts

# Queries, retrieves and N-services the router relays (router/relay/server.py).
RELAYED = (
    "QueryRetrievePresentationContexts", "BasicWorklistManagementPresentationContexts",
    "ModalityPerformedPresentationContexts", "StorageCommitmentPresentationContexts",
    "ProcedureStepPresentationContexts", "UnifiedProcedurePresentationContexts",
    "InstanceAvailabilityPresentationContexts", "RelevantPatientInformationPresentationContexts",
    "HangingProtocolPresentationContexts", "ColorPalettePresentationContexts",
    "DefinedProcedureProtocolPresentationContexts", "ImplantTemplatePresentationContexts",
    "ProtocolApprovalPresentationContexts", "DisplaySystemPresentationContexts",
)

HEADER = '''"""SOP classes and transfer syntaxes the acceptor negotiates, as pynetdicom and pydicom
list them, here as plain strings: the acceptor starts without importing either library.

Generated, do not edit: .venv/bin/python scripts/gen_uid_tables.py > router/dicom/uid_tables.py
(tests/unit/test_uid_tables.py fails when a library upgrade changes the lists).
"""

from __future__ import annotations

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
'''


def _unique(uids: Iterable[object]) -> list[str]:
    return list(dict.fromkeys(str(uid) for uid in uids))


def _table(name: str, source: str, uids: list[str]) -> str:
    lines = ["", *textwrap.wrap(source, 98, initial_indent="# ", subsequent_indent="# "),
             f"{name} = ("]
    for uid in uids:
        entry = f'    "{uid}",'
        lines.append(f"{entry}  # {UID(uid).name}"[:100].rstrip())
    return "\n".join([*lines, ")"]) + "\n"


def render() -> str:
    relayed = [cx.abstract_syntax for name in RELAYED for cx in getattr(contexts, name)]
    return (HEADER
            + _table("STORAGE_CLASSES", "pynetdicom's AllStoragePresentationContexts",
                     _unique(cx.abstract_syntax for cx in AllStoragePresentationContexts))
            + _table("RELAYED_CLASSES", "pynetdicom's presentation contexts of " + ", ".join(
                         n.removesuffix("PresentationContexts") for n in RELAYED),
                     _unique(relayed))
            + _table("TRANSFER_SYNTAXES", "pydicom's AllTransferSyntaxes",
                     _unique([ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                              *AllTransferSyntaxes])))


if __name__ == "__main__":
    print(render(), end="")
