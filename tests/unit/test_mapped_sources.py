"""Source networks written IPv4-mapped (`::ffff:10.0.0.0/104`) name the IPv4 senders they
say: a dual-stack listener checks an IPv4 sender by its IPv4 address (peer_address.py), so
such an entry is checked as its IPv4 network, and check-config says so."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from router.acceptor.access import AccessPolicy
from router.acceptor.session import AssociationSession
from router.cli.main import main
from router.core.config import ListenConfig
from router.core.peer_address import mapped_sources, source_network


@pytest.mark.parametrize(("entry", "network"), [
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
    ("::ffff:127.0.0.1", "127.0.0.1/32"),
    ("::ffff:0:0/96", "0.0.0.0/0"),
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("fd00::/8", "fd00::/8"),
    ("::/0", "::/0"),  # all of IPv6: not written as an IPv4 network
])
def test_a_mapped_network_is_its_ipv4_network(entry: str, network: str) -> None:
    assert source_network(entry) == ipaddress.ip_network(network)


def _allows(entries: list[str], address: str) -> bool:
    policy = AccessPolicy(ListenConfig(allowed_sources=entries))
    return policy.check(AssociationSession("CT1", "DICOM-ROUTER", address, 40000)) is None


@pytest.mark.parametrize(("entries", "address", "allowed"), [
    (["::ffff:10.0.0.0/104"], "10.1.2.3", True),
    (["::ffff:10.0.0.0/104"], "::ffff:10.1.2.3", True),
    (["::ffff:10.0.0.0/104"], "192.168.1.1", False),
    (["::ffff:127.0.0.1"], "127.0.0.1", True),
    (["::ffff:127.0.0.1"], "::1", False),
    (["fd00::/8"], "fd00::1", True),
])
def test_the_acceptor_checks_a_mapped_entry_as_ipv4(
        entries: list[str], address: str, allowed: bool) -> None:
    assert _allows(entries, address) is allowed


def test_check_config_says_what_a_mapped_entry_is_checked_as(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "listen": {"host": "::", "allowed_sources": ["::ffff:10.0.0.0/104", "fd00::/8"]},
        "destinations": {"out": {"type": "folder", "path": str(tmp_path / "out")}},
        "rules": [{"name": "lan", "match": {"source": "::ffff:127.0.0.1"}, "forward": ["out"]}],
    }))
    assert main(["check-config", str(config)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "checked as" in line]
    assert notes == [
        "dicom-router check-config: note: listen.allowed_sources: '::ffff:10.0.0.0/104' is "
        "checked as 10.0.0.0/8 (senders on a dual-stack listener are matched by their IPv4 "
        "address); write 10.0.0.0/8 to say so",
        "dicom-router check-config: note: rule 'lan' source: '::ffff:127.0.0.1' is checked as "
        "127.0.0.1/32 (senders on a dual-stack listener are matched by their IPv4 address); "
        "write 127.0.0.1/32 to say so"]
    assert mapped_sources(["10.0.0.0/8", "::/0"]) == []
