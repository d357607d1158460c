"""A pynetdicom sender that puts hostile values into what the router may log, for
test_log_safety.py. Run as a script (its own process): it turns pynetdicom's and pydicom's
UID checks off, which must not leak into the test process.

    python -m tests.integration.hostile_sender PORT UID_HEX CALLING_AE_HEX

(hex: argv cannot carry a NUL byte)
"""

from __future__ import annotations

import sys

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, _config

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def send(port: int, sop_instance_uid: str, calling_ae: str) -> int:
    """One C-STORE with `sop_instance_uid` as Affected SOP Instance UID; its status."""
    _config.ENFORCE_UID_CONFORMANCE = False
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CT_IMAGE_STORAGE, ImplicitVRLittleEndian)
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.PatientID = "HOSTILE"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM-ROUTER")
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status) if status and "Status" in status else -2


if __name__ == "__main__":
    print(send(int(sys.argv[1]), bytes.fromhex(sys.argv[2]).decode("latin-1"),
               bytes.fromhex(sys.argv[3]).decode("latin-1")))
