"""The chaos run's senders (loadtest/chaos.py): storescu processes that keep sending batches
of instances like a modality, sending again what was not answered Success, and once the pool
is through, copies of it under fresh SOP Instance UIDs, so that every file acknowledged is a
dataset of its own and a lost one cannot hide behind an earlier copy."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from tests.dcmtk import LOCALHOST, run_storescu
from tests.integration.senders import acknowledged

BATCH = 40  # files per storescu association


class Senders:
    """Threads that each run storescu over batches until told to stop; files not answered
    Success go back to the pending pool, and when it is empty, fresh copies of the pool
    (a new SOP Instance UID each) follow."""

    def __init__(self, files: list[Path], port: int, count: int, seed: int,
                 copies: Path, tls_args: list[str]) -> None:
        self.port, self.copies, self.tls_args = port, copies, tls_args
        self._pool = list(files)
        self._pending = list(files)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._random = random.Random(seed)
        self._copied = 0
        self.acknowledged: list[Path] = []
        self.associations = 0
        self.sent = 0
        self._threads = [threading.Thread(target=self._run, name=f"sender-{i}", daemon=True)
                         for i in range(count)]

    def start(self) -> None:
        self.copies.mkdir(parents=True, exist_ok=True)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._halt.set()
        for thread in self._threads:
            thread.join(180)

    def _take(self) -> list[Path]:
        with self._lock:
            if self._pending:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                return batch
            originals = self._random.sample(self._pool, min(BATCH, len(self._pool)))
            first, self._copied = self._copied, self._copied + len(originals)
        return [fresh_copy(path, self.copies, first + i) for i, path in enumerate(originals)]

    def _run(self) -> None:
        while not self._halt.is_set():
            batch = self._take()
            try:
                result = run_storescu(batch, LOCALHOST, self.port, called_ae="DICOM-ROUTER",
                                      extra_args=["-v", "-nh", *self.tls_args],
                                      timeout=90)
                ok = acknowledged(result.stdout + result.stderr)
            except subprocess.TimeoutExpired:
                ok = []  # storescu was killed: nothing of this run counts as answered
            answered = set(ok)
            with self._lock:
                self.associations += 1
                self.sent += len(batch)
                self.acknowledged += ok
                self._pending += [path for path in batch if path not in answered]
            if not ok:
                time.sleep(0.2)  # the router is down or restarting: a modality waits too


def fresh_copy(path: Path, folder: Path, number: int) -> Path:
    """`path` under a new SOP Instance UID of the same length (every element length stays
    valid), in the file meta and the dataset alike; not for a deflated file."""
    uid = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
    # A non-zero first digit: the replaced tail may start a UID component.
    fresh = uid[:-12] + "9" + f"{number:011d}"
    data = path.read_bytes()
    assert data.count(uid.encode()) == 2, f"{path}: its UID is not exactly in meta and dataset"
    target = folder / f"{fresh}.dcm"
    target.write_bytes(data.replace(uid.encode(), fresh.encode()))
    return target
