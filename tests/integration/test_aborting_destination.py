"""A destination that aborts the association under a C-STORE (README "Retries").

A PACS whose storage back end is down accepts associations and aborts every C-STORE: the
router backs off and keeps the whole queue (no attempt spent, no dead letter), and delivers
it once a PACS that accepts is there. A PACS that aborts on one instance only: that one
becomes a dead letter after its attempts, and the others arrive.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.dsutils import split_dataset

from tests.dcmtk import LOCALHOST, StoreSCP, free_port, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, dataset_digest, write_instance
from tests.integration.conftest import RouterFactory
from tests.integration.router_process import RouterProcess, wait_for

pytestmark = pytest.mark.integration

FAST = {"initial_delay": 0.1, "max_delay": 0.3}


class AbortingSCP:
    """A pynetdicom storage SCP (AE PACS, one association at a time) that aborts the
    association in its C-STORE handler: for every instance, or only for `poison`."""

    def __init__(self, poison: str | None = None) -> None:
        self.port = free_port()
        self.poison = poison
        self.aborts = 0
        self.received: list[bytes] = []
        self.received_at_abort: list[int] = []  # how many it had taken at each abort
        self.lock = threading.Lock()
        self.ae = AE(ae_title="PACS")
        self.ae.maximum_associations = 1
        for context in StoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian])

    def _store(self, event: Any) -> int:
        uid = event.request.AffectedSOPInstanceUID
        if self.poison is None or uid == self.poison:
            with self.lock:
                self.aborts += 1
                self.received_at_abort.append(len(self.received))
            event.assoc.abort()
            return 0x0000
        with self.lock:
            self.received.append(bytes(event.encoded_dataset(include_meta=False)))
        return 0x0000

    def __enter__(self) -> AbortingSCP:
        self.server = self.ae.start_server((LOCALHOST, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def _config(port: int, max_attempts: int) -> dict[str, Any]:
    return {"destinations": {"pacs": {
                "type": "dicom", "ae_title": "PACS", "host": LOCALHOST, "port": port,
                "retry": {"max_attempts": max_attempts, **FAST}}},
            "rules": [{"name": "all", "forward": ["pacs"]}]}


def _instances(folder: Path, n: int) -> list[Path]:
    return [write_instance(folder, sop_class=CTImageStorage, transfer_syntax=EXPLICIT_VR_LE,
                           size_bytes=3_000, sop_instance_uid=generate_uid())
            for _ in range(n)]


def _send(router: RouterProcess, files: list[Path]) -> None:
    sent = run_storescu(files, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert sent.returncode == 0, sent.stdout + sent.stderr


def _dead_letters(router: RouterProcess) -> list[Path]:
    return sorted((router.spool / "dead-letters").glob("*.json"))


def _queued(router: RouterProcess) -> int:
    return len(list((router.spool / "jobs").glob("*.dcm")))


def _backing_off_because(router: RouterProcess) -> str:
    row = router.status()["broker"]["destinations"]["pacs"]
    return "" if row["up"] else str(row["backing_off_because"])


def test_a_pacs_that_aborts_every_store_keeps_its_queue_until_one_accepts(
    start_router: RouterFactory, tmp_path: Path,
) -> None:
    files = _instances(tmp_path / "src", 4)
    with AbortingSCP() as aborting:
        router = start_router(_config(aborting.port, max_attempts=2))
        _send(router, files)
        # Each instance is aborted several times over: more than its 2 attempts.
        assert wait_for(lambda: aborting.aborts >= 4 * 3, timeout=60), router.log()[-3000:]
        assert wait_for(lambda: _backing_off_because(router).startswith(
            "aborted: pacs sent no C-STORE response"), timeout=10)
        assert _dead_letters(router) == [] and _queued(router) == 4  # the queue is kept
    # The PACS is repaired: a storescp (no --fork) takes the same port.
    with StoreSCP(tmp_path / "pacs", "PACS", port=aborting.port) as pacs:
        assert wait_for(lambda: _queued(router) == 0, timeout=60), router.log()[-3000:]
        assert {dataset_digest(p) for p in pacs.received_files()} == {
            dataset_digest(p) for p in files}
    assert _dead_letters(router) == []


def test_one_instance_that_makes_the_pacs_abort_becomes_a_dead_letter(
    start_router: RouterFactory, tmp_path: Path,
) -> None:
    poison, *others = _instances(tmp_path / "src", 3)
    with AbortingSCP(poison=poison.stem) as pacs:
        router = start_router(_config(pacs.port, max_attempts=2))
        _send(router, [poison, *others])
        # Its attempts are spent only as the PACS takes other instances between its tries:
        # more keep coming, as they would from modalities.
        for i in range(30):
            if _dead_letters(router):
                break
            more = _instances(tmp_path / f"more{i}", 1)
            others += more
            _send(router, more)
            wait_for(lambda: _queued(router) <= 1, timeout=10)
        assert wait_for(lambda: _queued(router) == 0, timeout=30), router.log()[-3000:]
        (dead,) = _dead_letters(router)
        assert dead.name.endswith(".pacs.json")
        record = dead.read_text()
        assert "aborted_retries_exhausted" in record and '"attempts": 2' in record
        assert sorted(pacs.received) == sorted(_raw(p) for p in others)
        # Its first abort and any that came with nothing taken since the one before are
        # free (a PACS whose storage is down); the dead letter came with the second that
        # followed a delivery. How many were free depends on how the retries met the new
        # instances (5 aborts once in CI under load), so that is not counted.
        taken = pacs.received_at_abort
        spent = [i for i in range(1, len(taken)) if taken[i] > taken[i - 1]]
        assert len(spent) == 2 and spent[-1] == len(taken) - 1, taken


def _raw(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]
