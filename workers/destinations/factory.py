"""Build the destination objects a delivery thread uses, from the config."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from router.core.config import DicomDestination as DicomConfig
from router.core.config import DicomWebDestination as DicomWebConfig
from router.core.config import FolderDestination as FolderConfig
from router.core.config import RouterConfig
from router.core.messages import JobHeader
from router.dicom.store_sender import DicomDestination, StorePool
from workers.destinations.folder import FolderDestination


class Destination(Protocol):
    name: str

    def deliver(self, job: JobHeader, source: Path) -> None:
        """Deliver or raise DeliveryError."""

    def close(self) -> None: ...


def build_destination(name: str, config: RouterConfig,
                      pool: StorePool | None = None) -> Destination:
    spec = config.destinations[name]
    if isinstance(spec, DicomConfig):
        return DicomDestination(name, spec, config.ae_title, pool)
    if isinstance(spec, FolderConfig):
        return FolderDestination(name, spec)
    if isinstance(spec, DicomWebConfig):
        # Imported here: dicomweb_client loads numpy and Pillow, which a worker without a
        # DICOMweb destination runs without (router/service/child_process.py, PIXEL_CODECS).
        from workers.destinations.dicomweb import DicomWebDestination

        return DicomWebDestination(name, spec)
    raise TypeError(f"unsupported destination type for {name!r}")  # pragma: no cover
