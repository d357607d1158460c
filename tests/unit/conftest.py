"""Fixtures for the fast, pure unit tests (no sockets, no subprocesses)."""

from __future__ import annotations

import pytest

from router.core.messages import JobHeader

from .helpers import make_header


@pytest.fixture
def header() -> JobHeader:
    return make_header()
