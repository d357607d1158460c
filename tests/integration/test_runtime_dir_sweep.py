"""A router killed with SIGKILL cannot remove its runtime folder (ZeroMQ sockets, metrics
files); the next router to start removes it (router/core/runtime_dirs.py), and a router
that stops removes its own."""

from __future__ import annotations

import tempfile
from pathlib import Path

from router.core.runtime_dirs import OWNER_FILE, PREFIX
from tests.integration.router_process import RouterProcess


def _runtime_dir_of(router: RouterProcess) -> Path:
    assert router.process is not None
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            if int((folder / OWNER_FILE).read_text().split()[0]) == router.process.pid:
                return folder
        except (OSError, ValueError, IndexError):
            continue
    raise LookupError(f"no runtime folder names pid {router.process.pid}")


def test_a_killed_routers_runtime_folder_goes_at_the_next_start(tmp_path: Path) -> None:
    router = RouterProcess(tmp_path / "r", {
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}]}).start()
    try:
        killed = _runtime_dir_of(router)
        assert (killed / "metrics").is_dir()
        router.kill_all()
        router.start()
        assert not killed.exists(), sorted(killed.rglob("*"))
        current = _runtime_dir_of(router)
    finally:
        router.stop()
    assert not current.exists()  # a router that stops removes its own
