"""Small builders shared by the unit tests."""

from __future__ import annotations

from typing import Any

from router.core.messages import JobHeader

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def make_header(
    job_id: str = "job-1",
    destinations: tuple[str, ...] | list[str] = ("pacs",),
    *,
    size: int = 100,
    **overrides: Any,
) -> JobHeader:
    """A JobHeader with plausible defaults; any field can be overridden by keyword."""
    values: dict[str, Any] = {
        "job_id": job_id,
        "calling_ae": "CT1",
        "called_ae": "DICOM-ROUTER",
        "peer_address": "10.1.2.3",
        "peer_port": 40000,
        "sop_class_uid": CT_IMAGE_STORAGE,
        "sop_instance_uid": "1.2.3.4.5",
        "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
        "size": size,
        "received_at": 1_700_000_000.25,
        "rules": ("ct-from-scanner",),
        "destinations": tuple(destinations),
    }
    values.update(overrides)
    return JobHeader(**values)
