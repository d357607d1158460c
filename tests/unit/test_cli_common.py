"""Where the command line reaches the router's HTTP port (router/cli/common.py)."""

from __future__ import annotations

import urllib.parse

import pytest

from router.cli.common import metrics_url


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:9100"),
    ("0.0.0.0", "http://127.0.0.1:9100"),  # every address: this host's
    ("::", "http://127.0.0.1:9100"),  # dual stack: its IPv4 side answers too
    ("::1", "http://[::1]:9100"),  # http://::1:9100 is no URL
    ("fd00::2", "http://[fd00::2]:9100"),
    ("router.example.org", "http://router.example.org:9100"),
])
def test_the_metrics_url_of_each_kind_of_host(host: str, url: str) -> None:
    assert metrics_url(host, 9100) == url
    assert urllib.parse.urlsplit(url).port == 9100
