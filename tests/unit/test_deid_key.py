"""spool.deidentify_key_file: the key every cell shares, checked at start with messages that
say what to fix, and used instead of each spool's own key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from router.cli.main import check_key_file
from router.core.config import SpoolConfig, default_config
from router.core.deid_key import read_key_file
from router.core.errors import ConfigError, RouterError
from router.core.spool import Spool
from workers.prepare import open_uid_map
from workers.transforms.uid_map import UidMap


def key_file(tmp_path: Path, data: bytes = bytes(range(32)), mode: int = 0o600) -> Path:
    path = tmp_path / "deid.key"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_cells_with_one_key_file_map_alike_and_make_no_key_of_their_own(
        tmp_path: Path) -> None:
    key = key_file(tmp_path)
    a, b = (Spool(tmp_path / cell).create() for cell in ("a", "b"))
    map_a, map_b = open_uid_map(a, key), open_uid_map(b, key)
    assert isinstance(map_a, UidMap) and isinstance(map_b, UidMap)
    assert map_a.new_uid("1.2.3.4") == map_b.new_uid("1.2.3.4")
    assert map_a.pseudonym("MRN123") == map_b.pseudonym("MRN123")
    alone = open_uid_map(Spool(tmp_path / "c").create())  # the default: a key of its own
    assert isinstance(alone, UidMap) and alone.new_uid("1.2.3.4") != map_a.new_uid("1.2.3.4")
    assert not (a.root / "deid-secret.key").exists()
    for uid_map in (map_a, map_b, alone):
        uid_map.close()


@pytest.mark.parametrize(("data", "mode", "says"), [
    (bytes(32), 0o604, "lets every user read it"),
    (b"ab" * 32, 0o600, "64 bytes, not a 32-byte key (raw bytes, not hex"),
    (b"", 0o600, "0 bytes"),
])
def test_a_bad_key_file_is_refused_saying_what_to_fix(
        tmp_path: Path, data: bytes, mode: int, says: str) -> None:
    with pytest.raises(RouterError, match=says.replace("(", r"\(")):
        read_key_file(key_file(tmp_path, data, mode))


def test_a_missing_key_file_names_the_key_and_how_to_make_one(tmp_path: Path) -> None:
    config = default_config().model_copy(update={"spool": SpoolConfig(
        path=tmp_path / "spool", deidentify_key_file=tmp_path / "nope")})
    with pytest.raises(ConfigError) as refused:
        check_key_file(config, "router.yaml")
    assert "spool.deidentify_key_file" in str(refused.value)
    assert "no such file" in str(refused.value) and "head -c 32 /dev/urandom" in str(
        refused.value)
    check_key_file(default_config(), "router.yaml")  # unset: nothing to check


def test_group_access_is_refused_unless_the_group_is_the_routers_own(tmp_path: Path) -> None:
    """A Kubernetes Secret mounted with the pod's fsGroup is group-readable by the router's
    own group: allowed. Another group is someone else."""
    key = key_file(tmp_path, mode=0o640)
    assert read_key_file(key) == bytes(range(32))  # created with our own group
    if os.geteuid() != 0:
        pytest.skip("changing a file's group to another one needs root")
    os.chown(key, -1, os.getegid() + 4242)
    with pytest.raises(RouterError, match=r"lets group .* read it: chmod g-rwx"):
        read_key_file(key)
