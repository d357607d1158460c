"""storescu sends that run in the background while a test breaks things, and what the
sender was told for each file (DCMTK's own log, `-v`)."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

from tests.dcmtk import LOCALHOST, run_storescu

_SENDING = re.compile(r"Sending file: (\S+)")
_RESPONSE = re.compile(r"Received Store Response \((.*)\)")


def acknowledged(output: str) -> list[Path]:
    """Files the receiver answered Success for, in order."""
    current: Path | None = None
    ok: list[Path] = []
    for line in output.splitlines():
        if match := _SENDING.search(line):
            current = Path(match.group(1))
        elif (match := _RESPONSE.search(line)) and current is not None:
            if match.group(1).startswith("Success"):
                ok.append(current)
            current = None
    return ok


class BackgroundSend(threading.Thread):
    """One storescu run over `files` in its own thread; `.output` once joined."""

    def __init__(self, files: list[Path], port: int, *, timeout: float = 240.0) -> None:
        super().__init__(daemon=True)
        self.files, self.port, self.timeout = files, port, timeout
        self.result: subprocess.CompletedProcess[str] | None = None

    def run(self) -> None:
        self.result = run_storescu(self.files, LOCALHOST, self.port, called_ae="DICOM-ROUTER",
                                   extra_args=["-v", "-nh"], timeout=self.timeout)

    @property
    def output(self) -> str:
        assert self.result is not None, "join() the send first"
        return self.result.stdout + self.result.stderr

    def acknowledged(self) -> list[Path]:
        return acknowledged(self.output)
