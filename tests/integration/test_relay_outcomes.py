"""What a relayed C-GET or relay-mode C-MOVE tells its requester, against pynetdicom upstreams
and targets that say what a PACS may say; and a storage commitment the upstream refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
)

from tests.dcmtk import LOCALHOST, free_port
from tests.integration.router_process import RouterProcess

pytestmark = pytest.mark.integration

ROUTER_AE = "DICOM-ROUTER"


# --- storage commitment ---------------------------------------------------------------------

def test_a_storage_commitment_the_upstream_refused_is_not_pending(tmp_path: Path) -> None:
    """N-ACTION answered 0x0110 upstream: the requester hears it and commitments/ keeps
    nothing (before: kept for 24 hours, waiting for a result that never comes)."""
    upstream = AE(ae_title="PACS")
    upstream.add_supported_context(StorageCommitmentPushModel)
    port = free_port()
    server = upstream.start_server((LOCALHOST, port), block=False, evt_handlers=[
        (evt.EVT_N_ACTION, lambda e: (0x0110, None))])
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                                  "port": port}},
        "known_aes": {"MODALITY": {"host": LOCALHOST, "port": free_port()}},
        "rules": [{"name": "qr", "query": ["pacs"]}]})
    router.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(LOCALHOST, router.port, ae_title=ROUTER_AE)
        assert assoc.is_established
        request = Dataset()
        request.TransactionUID = "1.2.826.0.1.3680043.8.498.1"
        item = Dataset()
        item.ReferencedSOPClassUID = str(CTImageStorage)
        item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
        request.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assoc.release()
        assert int(status.Status) == 0x0110
        assert list((router.spool / "commitments").iterdir()) == []
    finally:
        router.stop()
        server.shutdown()
