"""router/dicom/compat.py: one pynetdicom version check for every use of its internals."""

from __future__ import annotations

import pynetdicom
import pytest

from router.core.errors import RouterError
from router.dicom import compat


def test_the_installed_pynetdicom_is_supported() -> None:
    assert compat.is_supported()
    compat.require_supported()


def test_another_version_is_refused_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    assert not compat.is_supported()
    with pytest.raises(RouterError, match=r"pynetdicom 3\.1\.0 .* 3\.0\.x only"):
        compat.require_supported()
