"""The pynetdicom versions that router/dicom/ was written against: one check for every use
of pynetdicom's internals (its _config settings in net.py, the association's socket that
net.tune_scu_socket tunes, which pynetdicom reads with `recv`, the DIMSE message classes
that relayed_dimse.py translates relayed requests with). pyproject.toml pins the same range;
this check catches an install that overrides it. `dicom-router run` makes it before it starts
anything, reading the installed version without importing pynetdicom (the supervisor never
loads it, and the processes that use it import it on need: router/dicom/first_use.py)."""

from __future__ import annotations

import sys
from importlib import metadata

from router.core.errors import RouterError

SUPPORTED_VERSIONS = ("3.0.",)


def current_version() -> str:
    """The version of the pynetdicom this process has loaded, else of the one installed."""
    loaded = sys.modules.get("pynetdicom")
    if loaded is not None:
        return str(loaded.__version__)
    try:
        return metadata.version("pynetdicom")
    except metadata.PackageNotFoundError:
        return "(none)"


def is_supported(version: str | None = None) -> bool:
    return (version or current_version()).startswith(SUPPORTED_VERSIONS)


def require_supported() -> None:
    """Raise RouterError, naming the versions, when pynetdicom is not one of them."""
    version = current_version()
    if not is_supported(version):
        wanted = " or ".join(v + "x" for v in SUPPORTED_VERSIONS)
        raise RouterError(
            f"pynetdicom {version} is installed, but the router's DICOM layer "
            f"(router/dicom/) works with pynetdicom {wanted} only: install the version "
            "pyproject.toml names (pip install -e .)")
