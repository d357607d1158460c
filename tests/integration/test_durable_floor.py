"""The benchmark's durable floor (loadtest/durable_receiver.py) really receives and keeps
what storescu sends: its `x direct` figure bounds the router's targets in the bench report,
so a floor that dropped or cut data would make that bound a lie."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from tests.dcmtk import LOCALHOST, free_port, run_echoscu, run_storescu
from tests.dicom_samples import dataset_digest, generate_mixed_set

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the durable receiver exited"
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the durable receiver did not listen within 30 s")


def test_durable_receiver_keeps_every_instance_byte_identical(tmp_path: Path) -> None:
    sources = generate_mixed_set(tmp_path / "src", 24)
    folder, port = tmp_path / "received", free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loadtest.durable_receiver", "--port",
                             str(port), "--folder", str(folder)], cwd=REPO)
    try:
        _wait_port(port, proc)
        assert run_echoscu(LOCALHOST, port, called_ae="FLOOR").returncode == 0
        sent = run_storescu(sources, LOCALHOST, port, called_ae="FLOOR")
        assert sent.returncode == 0, sent.stdout + sent.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    received = sorted(folder.iterdir())
    assert len(received) == len(sources)
    stored = {dataset_digest(p): p for p in received}
    for source in sources:
        match = stored.get(dataset_digest(source))
        assert match is not None, f"{source.name} changed in the durable receiver"
        assert (read_file_meta_info(match).TransferSyntaxUID
                == read_file_meta_info(source).TransferSyntaxUID)
