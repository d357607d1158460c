"""router/dicom/uid_tables.py: the acceptor's SOP classes and transfer syntaxes as plain
strings, equal to what pynetdicom and pydicom list, so that a library upgrade that adds
classes or syntaxes fails here instead of leaving the acceptor behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts, QueryRetrievePresentationContexts
from pynetdicom.presentation import (
    ModalityPerformedPresentationContexts,
    StorageCommitmentPresentationContexts,
)

from router.dicom import uid_tables

ROOT = Path(__file__).resolve().parents[2]


def test_the_file_is_what_its_generator_writes_with_the_installed_libraries() -> None:
    done = subprocess.run([sys.executable, "scripts/gen_uid_tables.py"], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout == (ROOT / "router/dicom/uid_tables.py").read_text(), \
        "regenerate: .venv/bin/python scripts/gen_uid_tables.py > router/dicom/uid_tables.py"


def test_storage_classes_and_transfer_syntaxes_are_the_libraries_own() -> None:
    assert set(uid_tables.STORAGE_CLASSES) == \
        {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    assert set(uid_tables.TRANSFER_SYNTAXES) == {str(ts) for ts in AllTransferSyntaxes}
    assert (ExplicitVRLittleEndian, ImplicitVRLittleEndian) == \
        (uid_tables.EXPLICIT_VR_LE, uid_tables.IMPLICIT_VR_LE)
    assert all(type(uid) is str for uid in uid_tables.STORAGE_CLASSES)  # not pydicom UIDs


def test_the_relayed_classes_hold_queries_retrieves_and_n_services() -> None:
    relayed = set(uid_tables.RELAYED_CLASSES)
    for contexts in (QueryRetrievePresentationContexts, ModalityPerformedPresentationContexts,
                     StorageCommitmentPresentationContexts):
        assert {str(cx.abstract_syntax) for cx in contexts} <= relayed
    assert not relayed & set(uid_tables.STORAGE_CLASSES)
