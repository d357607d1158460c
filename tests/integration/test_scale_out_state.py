"""Two router cells behind HAProxy sharing `spool.shared_state_dir`: what a later association
needs from an earlier one is found whichever cell it reaches. The PACS's N-EVENT-REPORT
comes on an association of its own and the modality's N-SET on a new one; round robin gives
each to the other cell than the request before it (docs/scale-out.md "State the cells
share").
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityPerformedProcedureStep,
    StorageCommitmentPushModel,
)

from tests.commitment import CommitmentRequester
from tests.dcmtk import LOCALHOST, free_port
from tests.integration.router_process import RouterProcess, wait_for
from tests.integration.test_relay_nservices import (
    RIS,
    RIS_AE,
    WORKLIST,
    Requester,
    mpps_completed,
    mpps_in_progress,
)
from tests.integration.test_relay_outcomes import (
    Target,
    Upstream,
    _files,
    _move,
    _report,
    _request_commitment,
)
from tests.integration.test_scale_out import CELLS, HAProxy, metric_sum

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]


class ReportingPACS:
    """A storage commitment SCP that reports each result a moment later on an association
    of its own to the router's address (the load balancer), as Orthanc and archives do."""

    def __init__(self) -> None:
        self.router_port = 0
        self.statuses: list[int | None] = []
        self.ae = AE(ae_title="PACS")
        self.ae.add_supported_context(StorageCommitmentPushModel)
        self.port = free_port()
        self.server = self.ae.start_server((LOCALHOST, self.port), block=False, evt_handlers=[
            (evt.EVT_N_ACTION, self.on_action)])

    def on_action(self, event: Any) -> tuple[int, None]:
        threading.Thread(target=self.report, args=(event.action_information,),
                         daemon=True).start()
        return 0x0000, None

    def report(self, action: Dataset) -> None:
        time.sleep(0.2)  # after its N-ACTION-RSP, as an archive would
        self.statuses.append(_report(self.router_port, "PACS", action))

    def close(self) -> None:
        self.server.shutdown()


class SharedCells:
    """Two cells with one config and one shared state folder, behind HAProxy."""

    def __init__(self, tmp_path: Path, config: dict[str, Any]) -> None:
        self.cells = {name: RouterProcess(tmp_path / name, {**config, "spool": {
            "path": str(tmp_path / name / "spool"),
            "shared_state_dir": str(tmp_path / "shared")}}) for name in CELLS}
        self.proxy = HAProxy(tmp_path / "haproxy", self.cells)

    def __enter__(self) -> SharedCells:
        try:
            for cell in self.cells.values():
                cell.start()
            self.proxy.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.proxy.stop()
        for cell in self.cells.values():
            cell.stop()

    def handled(self, command: str) -> dict[str, int]:
        """Cell name -> how many `command` requests it answered."""
        return {name: int(metric_sum(cell, "dicom_router_dimse_requests_total",
                                     command=command))
                for name, cell in self.cells.items()}

    def no_traceback(self) -> None:
        for name, cell in self.cells.items():
            assert "Traceback" not in cell.log(), f"{name}:\n{cell.log()[-3000:]}"


@pytest.fixture
def pacs() -> Iterator[ReportingPACS]:
    pacs = ReportingPACS()
    try:
        yield pacs
    finally:
        pacs.close()


@pytest.mark.timeout(120)
def test_a_commitment_result_reaching_the_other_cell_is_delivered(
        tmp_path: Path, pacs: ReportingPACS) -> None:
    """Each N-ACTION is relayed by one cell, its result reaches the other, which finds the
    commitment in the shared folder and delivers it (before: refused 0x0110 "unknown
    transaction", and the modality never got its result)."""
    with CommitmentRequester("MODALITY") as requester, SharedCells(tmp_path, {
            "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                                      "port": pacs.port}},
            "known_aes": {"MODALITY": {"host": LOCALHOST, "port": requester.port}},
            "rules": [{"name": "qr", "query": ["pacs"]}]}) as cells:
        pacs.router_port = cells.proxy.port
        for n in range(2):
            status, transaction = _request_commitment(
                cells.proxy.port, f"1.2.826.0.1.3680043.8.498.4{n}",
                f"1.2.826.0.1.3680043.8.498.5{n}")
            assert status == 0x0000
            report = requester.wait_report(transaction, 20)
            assert report.committed == ((str(CTImageStorage),
                                         f"1.2.826.0.1.3680043.8.498.5{n}"),)
        assert wait_for(lambda: len(pacs.statuses) == 2, timeout=10)
        assert pacs.statuses == [0x0000, 0x0000]
        actions, results = cells.handled("N-ACTION"), cells.handled("N-EVENT-REPORT")
        # Round robin: the results were answered by the cells that did not relay them.
        assert sorted(actions.values()) == sorted(results.values()) and actions != results, (
            actions, results)
        assert list((tmp_path / "shared" / "commitments").glob("*.json")) == []
        cells.no_traceback()


@pytest.mark.timeout(120)
def test_an_mpps_n_set_reaching_the_other_cell_follows_its_n_create(tmp_path: Path) -> None:
    """`query: [ris1, ris2]`, ris1 down at the N-CREATE: ris2 takes it. With ris1 back, the
    N-SET on a new association reaches the other cell, which reads the shared n-instances/
    and sends it to ris2 (before: to ris1, which answered 0x0112, and the step stayed IN
    PROGRESS)."""
    ris2 = RIS(WORKLIST)
    port1 = free_port()
    ris1: RIS | None = None
    instance = generate_uid()
    try:
        with SharedCells(tmp_path, {
                "destinations": {
                    "ris1": {"type": "dicom", "ae_title": RIS_AE, "host": LOCALHOST,
                             "port": port1, "connect_timeout": 2},
                    "ris2": {"type": "dicom", "ae_title": RIS_AE, "host": LOCALHOST,
                             "port": ris2.port}},
                "rules": [{"name": "mpps",
                           "match": {"sop_class": "ModalityPerformedProcedureStep"},
                           "query": ["ris1", "ris2"]}],
                "request_timeout": 30}) as cells:
            with Requester(cells.proxy.port, [ModalityPerformedProcedureStep]) as scu:
                status, _ = scu.assoc.send_n_create(mpps_in_progress(generate_uid()),
                                                    ModalityPerformedProcedureStep, instance)
            assert int(status.Status) == 0x0000 and instance in ris2.mpps
            ris1 = RIS(WORKLIST, port=port1)
            with Requester(cells.proxy.port, [ModalityPerformedProcedureStep]) as scu:
                status, _ = scu.assoc.send_n_set(
                    mpps_completed(generate_uid(), [generate_uid()]),
                    ModalityPerformedProcedureStep, instance)
            assert int(status.Status) == 0x0000
            assert ris2.mpps[instance].PerformedProcedureStepStatus == "COMPLETED"
            assert [r.command for r in ris1.received] == []
            created, set_ = cells.handled("N-CREATE"), cells.handled("N-SET")
            assert created != set_, (created, set_)  # the N-SET went to the other cell
            cells.no_traceback()
    finally:
        ris2.close()
        if ris1 is not None:
            ris1.close()


@pytest.mark.timeout(120)
def test_a_relayed_c_moves_instances_reaching_the_other_cell_fail_it_and_say_why(
        tmp_path: Path) -> None:
    """A known limit (docs/scale-out.md "What stays per cell"): the upstream sends a
    relay-mode move's instances on a new association, which reaches the other cell. The
    requester gets a failure, never Success, and the cell that got the instances says they
    are most likely another cell's move and what to do (before: it said nothing, and the
    relaying cell only suggested store_ae_titles)."""
    upstream = Upstream("MOVEQR", _files(tmp_path / "src", 3))
    target = Target()
    try:
        with SharedCells(tmp_path, {
                "destinations": {
                    "pacs": {"type": "dicom", "ae_title": "MOVEQR", "host": LOCALHOST,
                             "port": upstream.port, "move_mode": "relay"},
                    "archive": {"type": "folder", "path": str(tmp_path / "archive")}},
                "known_aes": {"TARGET": {"host": LOCALHOST, "port": target.port}},
                "request_timeout": 30,
                "rules": [{"name": "qr", "query": ["pacs"], "forward": ["archive"]}]}) as cells:
            upstream.move_to = (LOCALHOST, cells.proxy.port)
            answers = _move(cells.proxy.port)
            assert answers[-1][0] == 0xA702 and answers[-1][3] == 3, answers
            assert target.received == []
            moved = [n for n, c in cells.cells.items() if "reported sent never reached" in c.log()]
            other = [c for n, c in cells.cells.items() if n not in moved]
            assert len(moved) == 1 and len(other) == 1, moved
            assert "most likely another cell's relayed move" in other[0].log()
            assert "move_mode: pass_through for destinations.pacs" in other[0].log()
            assert "another router cell" in cells.cells[moved[0]].log()
            cells.no_traceback()
    finally:
        upstream.close()
        target.close()
