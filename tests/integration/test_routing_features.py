"""Routing features through the real router: drop and reject rules, priorities, an
off-peak time window, study/series completion batches.

The destination is a pynetdicom storage SCP written here that records, per received
instance, the association it came on and the order, which DCMTK's storescp does not tell.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.dcmtk import LOCALHOST, free_port, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.conftest import RouterFactory
from tests.integration.router_process import RouterProcess, http_get, wait_for

pytestmark = pytest.mark.integration

AE_TITLE = "DICOM-ROUTER"
CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Received:
    association: int
    sop_instance_uid: str
    instance_number: int
    priority: int


class RecordingSCP:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.ae = AE(ae_title="RECORDER")
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            self.ae.add_supported_context(cx.abstract_syntax, [EXPLICIT_VR_LE])
        self.port = free_port()
        self.server = self.ae.start_server((LOCALHOST, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event: Any) -> int:
        ds = event.dataset
        with self.lock:
            self.received.append(Received(id(event.assoc), str(ds.SOPInstanceUID),
                                          int(ds.get("InstanceNumber", 0) or 0),
                                          int(event.request.Priority)))
        return 0x0000

    def uids(self) -> list[str]:
        with self.lock:
            return [r.sop_instance_uid for r in self.received]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def recorder() -> Iterator[RecordingSCP]:
    scp = RecordingSCP()
    yield scp
    scp.close()


def destination(scp: RecordingSCP, **extra: Any) -> dict[str, Any]:
    return {"type": "dicom", "ae_title": "RECORDER", "host": LOCALHOST, "port": scp.port,
            **extra}


def series(folder: Path, count: int, *, sop_class: str = CT, study: str | None = None,
           series_uid: str | None = None, numbers: list[int] | None = None) -> list[Path]:
    from pydicom.uid import generate_uid

    study = study or generate_uid()
    series_uid = series_uid or generate_uid()
    return [write_instance(folder, sop_class=sop_class, transfer_syntax=EXPLICIT_VR_LE,
                           size_bytes=3000, study_uid=study, series_uid=series_uid,
                           tags={"InstanceNumber": n})
            for n in (numbers or list(range(1, count + 1)))]


def sop_uids(files: list[Path]) -> list[str]:
    from pydicom import dcmread

    return [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


# --- drop and reject ----------------------------------------------------------------------

def test_drop_answers_success_and_reject_a_failure(start_router: RouterFactory,
                                                   recorder: RecordingSCP,
                                                   tmp_path: Path) -> None:
    router = start_router({
        "destinations": {"pacs": destination(recorder)},
        "rules": [
            {"name": "no-secondary-captures", "match": {"sop_class": SC}, "action": "drop"},
            {"name": "not-from-intruder", "match": {"calling_ae": "INTRUDER"},
             "action": "reject"},
            {"name": "rest", "forward": ["pacs"]},
        ]})
    ct = series(tmp_path / "ct", 2)
    sc = series(tmp_path / "sc", 2, sop_class=SC)
    sent = run_storescu([*ct, *sc], LOCALHOST, router.port, called_ae=AE_TITLE)
    assert sent.returncode == 0, sent.stderr  # dropped ones were answered Success
    assert wait_for(lambda: sorted(recorder.uids()) == sorted(sop_uids(ct)))
    assert router.metric("dicom_router_instances_dropped_total",
                         rule="no-secondary-captures") == 2
    assert router.metric("dicom_router_instances_received_total", result="dropped") == 2
    refused = run_storescu(ct[:1], LOCALHOST, router.port, called_ae=AE_TITLE,
                           calling_ae="INTRUDER")
    assert refused.returncode != 0
    assert router.metric("dicom_router_dimse_requests_total", command="C-STORE",
                         status="0xC004") == 1
    assert "refused by the router's rule not-from-intruder" in router.log()


# --- time window and priorities -----------------------------------------------------------

def test_an_off_peak_destination_is_held_then_released_urgent_first(
        start_router: RouterFactory, recorder: RecordingSCP, tmp_path: Path) -> None:
    opens = (datetime.now() + timedelta(seconds=12)).replace(microsecond=0)
    closes = opens + timedelta(hours=1)
    window = {"start": opens.strftime("%H:%M:%S"), "end": closes.strftime("%H:%M:%S")}
    router = start_router({
        "destinations": {"pacs": destination(recorder, window=window, max_parallel=1)},
        "rules": [
            {"name": "stat", "match": {"calling_ae": "ER_CT"}, "forward": ["pacs"],
             "priority": "urgent"},
            {"name": "routine", "forward": ["pacs"]},
        ]})
    routine = series(tmp_path / "routine", 5)
    stat = series(tmp_path / "stat", 2)
    assert run_storescu(routine, LOCALHOST, router.port, called_ae=AE_TITLE).returncode == 0
    assert run_storescu(stat, LOCALHOST, router.port, called_ae=AE_TITLE,
                        calling_ae="ER_CT").returncode == 0
    assert recorder.uids() == [], "delivered before the window opened"
    status = json.loads(http_get(router.metrics_port, "/status")[1])
    assert status["broker"]["destinations"]["pacs"]["in_window"] is False
    assert wait_for(lambda: router.metric("dicom_router_queue_depth", destination="pacs") == 7)
    assert wait_for(lambda: len(recorder.uids()) == 7, timeout=60)
    assert datetime.now() >= opens
    delivered = recorder.uids()
    assert set(delivered[:2]) == set(sop_uids(stat)), "urgent work did not go first"
    assert delivered[2:] == sop_uids(routine)  # the rest in arrival order
    assert [r.priority for r in recorder.received[:2]] == [1, 1]  # DIMSE HIGH


# --- study/series completion --------------------------------------------------------------

def test_a_series_goes_as_one_batch_in_instance_order_once_stable(
        start_router: RouterFactory, recorder: RecordingSCP, tmp_path: Path) -> None:
    router = start_router({
        "destinations": {"pacs": destination(recorder)},
        "rules": [{"name": "series", "forward": ["pacs"],
                   "complete": {"level": "series", "stable_for": 4, "deadline": 120}}]})
    from pydicom.uid import generate_uid

    study, series_uid = generate_uid(), generate_uid()
    first = series(tmp_path / "a", 3, study=study, series_uid=series_uid, numbers=[5, 3, 6])
    second = series(tmp_path / "b", 3, study=study, series_uid=series_uid, numbers=[2, 4, 1])
    assert run_storescu(first, LOCALHOST, router.port, called_ae=AE_TITLE).returncode == 0
    assert run_storescu(second, LOCALHOST, router.port, called_ae=AE_TITLE).returncode == 0
    assert wait_for(lambda: router.metric("dicom_router_queue_depth", destination="pacs") == 6)
    assert recorder.uids() == [], "sent before the series was stable"
    assert wait_for(lambda: len(recorder.uids()) == 6, timeout=60)
    assert [r.instance_number for r in recorder.received] == [1, 2, 3, 4, 5, 6]
    assert len({r.association for r in recorder.received}) == 1, "not one association"


def test_each_destination_waits_for_the_completion_of_the_rule_that_routed_it(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """A series rule (continue: true) for ai, then a study rule for archive: only the first
    rule's `complete` was kept, so archive got each instance at once. Now ai gets the
    series once stable and archive still holds the study (its stable_for is far away)."""
    from tests.dcmtk import StoreSCP

    with StoreSCP(tmp_path / "ai", "AI") as ai:
        router = start_router({
            "destinations": {
                "ai": {"type": "dicom", "ae_title": "AI", "host": LOCALHOST, "port": ai.port},
                "archive": {"type": "folder", "path": str(tmp_path / "archive")}},
            "rules": [{"name": "ai-series", "continue": True, "forward": ["ai"],
                       "complete": {"level": "series", "stable_for": 2, "deadline": 120}},
                      {"name": "archive-study", "forward": ["archive"],
                       "complete": {"level": "study", "stable_for": 3600,
                                    "deadline": 7200}}]})
        files = series(tmp_path / "s", 3, numbers=[3, 1, 2])
        assert run_storescu(files, LOCALHOST, router.port, called_ae=AE_TITLE).returncode == 0
        assert wait_for(lambda: len(ai.received_files()) == 3, timeout=60), router.log()[-2000:]
        assert wait_for(lambda: router.metric("dicom_router_queue_depth",
                                              destination="archive") == 3)
        assert not (tmp_path / "archive").exists() or not any(
            p.is_file() for p in (tmp_path / "archive").rglob("*")), "archive did not wait"


def test_held_studies_leave_the_rest_of_the_queue_to_other_senders(
        start_router: RouterFactory, recorder: RecordingSCP, tmp_path: Path) -> None:
    """Held jobs filled queue.max_jobs and every sender, for every destination, heard
    0xA700 (and new associations were turned away) until the study was stable. Now held
    jobs take half of it: the held study's sender is refused, another sender is not."""
    router = start_router({
        "queue": {"max_jobs": 4},
        "destinations": {"pacs": destination(recorder),
                         "ai": {"type": "folder", "path": str(tmp_path / "ai")}},
        "rules": [{"name": "er", "match": {"calling_ae": "ER_CT"}, "forward": ["pacs"]},
                  {"name": "study", "forward": ["ai"],
                   "complete": {"level": "study", "stable_for": 600, "deadline": 1200}}]})
    held = run_storescu(series(tmp_path / "held", 3), LOCALHOST, router.port,
                        called_ae=AE_TITLE)
    assert held.returncode != 0, "the third held instance was taken"
    assert "queue full for study/series completion" in router.log()
    # Counted apart: queue_full (the alert for a full queue) stays 0 while the rest flows.
    assert router.metric("dicom_router_refusals_total", reason="completion_share") >= 1
    assert router.metric("dicom_router_refusals_total", reason="queue_full") == 0
    er = series(tmp_path / "er", 2)
    assert run_storescu(er, LOCALHOST, router.port, called_ae=AE_TITLE,
                        calling_ae="ER_CT").returncode == 0, router.log()[-2000:]
    assert wait_for(lambda: sorted(recorder.uids()) == sorted(sop_uids(er)))


def test_held_groups_survive_a_restart(tmp_path: Path, recorder: RecordingSCP) -> None:
    config = {"destinations": {"pacs": destination(recorder)},
              "rules": [{"name": "study", "forward": ["pacs"],
                         "complete": {"level": "study", "stable_for": 6, "deadline": 120}}]}
    router = RouterProcess(tmp_path / "r", config).start()
    try:
        files = series(tmp_path / "s", 4, numbers=[4, 2, 3, 1])
        assert run_storescu(files, LOCALHOST, router.port, called_ae=AE_TITLE).returncode == 0
        assert router.stop() == 0
        assert recorder.uids() == []
        router.start()
        assert wait_for(lambda: len(recorder.uids()) == 4, timeout=60)
        assert [r.instance_number for r in recorder.received] == [1, 2, 3, 4]
    finally:
        router.stop()
