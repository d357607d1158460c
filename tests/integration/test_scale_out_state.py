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

from tests.archive_servers import Dcmqrscp
from tests.commitment import CommitmentRequester
from tests.dcmtk import LOCALHOST, StoreSCP, free_port
from tests.integration.router_process import RouterProcess, wait_for
from tests.integration.test_relay_nservices import (
    RIS,
    RIS_AE,
    WORKLIST,
    Requester,
    mpps_completed,
    mpps_in_progress,
)
from tests.integration.test_relay_outcomes import _report, _request_commitment
from tests.integration.test_scale_out import CELLS, HAProxy, metric_sum
from tests.qr_tools import run_movescu
from tests.study_set import instance_mismatches, make_study_set

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

ROUTER_AE = "DICOM-ROUTER"


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

    def relayed(self) -> dict[str, int]:
        """Cell name -> how many relayed C-MOVE instances it received."""
        return {name: int(cell.metric("dicom_router_instances_received_total",
                                      result="relayed"))
                for name, cell in self.cells.items()}

    def logs(self) -> str:
        return "".join(f"\n--- {name}\n{cell.log()[-3000:]}" for name, cell in self.cells.items())

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


MOVES = 3  # round robin gives each archive association the other cell than its movescu's


@pytest.mark.timeout(120)
def test_a_relayed_c_moves_instances_reaching_the_other_cell_reach_the_move(
        tmp_path: Path) -> None:
    """move_mode relay behind HAProxy: dcmqrscp sends each move's instances on an
    association of its own to the router's address, which round robin gives the other cell
    than the movescu's. That cell finds the move in the shared moves/ and hands the
    instances to the relaying cell through the shared folder: every study arrives
    byte-identical at a storescp that takes one association at a time, with Success and
    the archive's counts (before: routed as ordinary work, and the requester got 0xA702
    with "reported sent never arrived")."""
    studies = make_study_set(tmp_path / "studies", patients=1, studies_per_patient=MOVES,
                             series_per_study=1, implicit_series=0)
    front = free_port()  # HAProxy's: the archive moves to the router there
    with Dcmqrscp(tmp_path / "archive", studies, "ARCHIVE",
                  move_destinations=[(ROUTER_AE, LOCALHOST, front)]) as archive, \
            StoreSCP(tmp_path / "viewer", "ONEVIEW") as viewer:
        cells = SharedCells(tmp_path, {
            "ae_title": ROUTER_AE,
            "destinations": {"archive": {"type": "dicom", "ae_title": "ARCHIVE",
                                         "host": LOCALHOST, "port": archive.port,
                                         "move_mode": "relay"}},
            "known_aes": {"ONEVIEW": {"host": LOCALHOST, "port": viewer.port}},
            "request_timeout": 30,
            "rules": [{"name": "qr", "query": ["archive"]}]})
        cells.proxy.port = front
        with cells:
            crossed = 0
            for study in studies.studies:
                for path in viewer.received_files():
                    path.unlink()
                moves, relayed = cells.handled("C-MOVE"), cells.relayed()
                result = run_movescu(LOCALHOST, front, ROUTER_AE, "STUDY",
                                     {"StudyInstanceUID": study.study_instance_uid},
                                     "ONEVIEW", calling_ae="MOVER", check=False)
                assert result.ok, result.output[-1500:] + cells.logs()
                assert instance_mismatches(study.instances, viewer.received_files()) == []
                mover = _grown(moves, cells.handled("C-MOVE"))
                receiver = _grown(relayed, cells.relayed())
                crossed += mover != receiver
            assert crossed, "every archive association reached the movescu's cell"
            assert sum(cells.relayed().values()) == len(studies.files)
            for name, cell in cells.cells.items():
                assert cell.metric("dicom_router_instances_received_total",
                                   result="accepted") == 0, f"{name} took one as new work"
                assert "C-MOVE message ID" not in cell.log(), cell.log()[-3000:]
            shared = tmp_path / "shared"
            assert [p.name for p in (shared / "move-instances").iterdir()] == []
            assert [p.name for p in (shared / "moves").iterdir() if p.name.isdigit()] == []
            cells.no_traceback()


def _grown(before: dict[str, int], after: dict[str, int]) -> str:
    """The one cell whose count grew."""
    grown = [name for name in after if after[name] > before.get(name, 0)]
    assert len(grown) == 1, (before, after)
    return grown[0]
