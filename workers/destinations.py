"""Build the destination objects a delivery thread uses, from the config."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from router.config import DicomDestination as DicomConfig
from router.config import DicomWebDestination as DicomWebConfig
from router.config import FolderDestination as FolderConfig
from router.config import RouterConfig
from router.messages import JobHeader
from workers.association_pool import AssociationPool
from workers.dicom_destination import DicomDestination
from workers.dicomweb_destination import DicomWebDestination
from workers.folder_destination import FolderDestination


class Destination(Protocol):
    name: str

    def deliver(self, job: JobHeader, source: Path) -> None:
        """Deliver or raise DeliveryError."""

    def close(self) -> None: ...


def build_destination(name: str, config: RouterConfig,
                      pool: AssociationPool | None = None) -> Destination:
    spec = config.destinations[name]
    if isinstance(spec, DicomConfig):
        return DicomDestination(name, spec, config.ae_title, pool)
    if isinstance(spec, FolderConfig):
        return FolderDestination(name, spec)
    if isinstance(spec, DicomWebConfig):
        return DicomWebDestination(name, spec)
    raise TypeError(f"unsupported destination type for {name!r}")  # pragma: no cover
