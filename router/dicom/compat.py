"""The pynetdicom versions that router/dicom/ was written against: one check for every use
of pynetdicom's internals (the event-driven loops in reactors.py, the read guard in
guarded_transport.py, the relay hook in relay_association.py, the negotiation order in
net.py). pyproject.toml pins the same range; this check catches an install that overrides
it, before any of those patches meets classes they do not fit."""

from __future__ import annotations

import pynetdicom

from router.core.errors import RouterError

SUPPORTED_VERSIONS = ("3.0.",)


def is_supported(version: str | None = None) -> bool:
    return (version or pynetdicom.__version__).startswith(SUPPORTED_VERSIONS)


def require_supported() -> None:
    """Raise RouterError, naming the versions, when pynetdicom is not one of them."""
    if not is_supported():
        wanted = " or ".join(v + "x" for v in SUPPORTED_VERSIONS)
        raise RouterError(
            f"pynetdicom {pynetdicom.__version__} is installed, but the router's DICOM layer "
            f"(router/dicom/) works with pynetdicom {wanted} only: install the version "
            "pyproject.toml names (pip install -e .)")
