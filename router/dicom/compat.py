"""The pynetdicom versions that router/dicom/ was written against: one check for every use
of pynetdicom's internals (its _config settings in net.py, the association's socket that
net.tune_scu_socket tunes, which pynetdicom reads with `recv`, the DIMSE message classes
that relayed_dimse.py translates relayed requests with). pyproject.toml pins the same range;
this check catches an install that overrides it."""

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
