"""Query and retrieve through the router against a real archive (DCMTK dcmqrscp).

Every answer through the router is compared with the same request sent straight to the
archive: C-FIND results, C-GET instances, C-MOVE deliveries (pass-through and relay), the
sub-operation counts, C-CANCEL mid-query, and failures when the upstream is down.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from router.core.owned_names import writer_pid
from tests.archive_servers import Dcmqrscp
from tests.dcmtk import LOCALHOST, StoreSCP, free_port
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.router_process import RouterProcess, wait_for
from tests.qr_tools import run_findscu, run_getscu, run_movescu
from tests.study_set import StudySet, instance_mismatches, make_study_set
from tests.tcp_counters import require_delayed_ack_counter

pytestmark = pytest.mark.integration

ROUTER_AE = "DICOM-ROUTER"
STUDY_KEYS = {"StudyInstanceUID": "", "PatientID": "", "AccessionNumber": "", "StudyDate": ""}


@pytest.fixture(scope="module")
def router_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, study_set: StudySet, viewer: StoreSCP,
            router_port: int) -> Iterator[Dcmqrscp]:
    # The archive knows the viewer (pass-through moves) and the router (relayed moves).
    moves = [("VIEWER", LOCALHOST, viewer.port), (ROUTER_AE, LOCALHOST, router_port)]
    with Dcmqrscp(tmp_path_factory.mktemp("archive"), study_set, "ARCHIVE",
                  move_destinations=moves) as qr:
        yield qr


def router_config(archive: Dcmqrscp, viewer: StoreSCP, move_mode: str,
                  **known: StoreSCP) -> dict[str, Any]:
    known_aes = {"VIEWER": {"host": LOCALHOST, "port": viewer.port},
                 **{title: {"host": LOCALHOST, "port": scp.port} for title, scp in known.items()}}
    return {
        "destinations": {"archive": {"type": "dicom", "ae_title": "ARCHIVE", "host": LOCALHOST,
                                     "port": archive.port, "move_mode": move_mode,
                                     "dimse_timeout": 15}},
        "known_aes": known_aes,
        "rules": [{"name": "qr", "query": ["archive"]}],
        "request_timeout": 30,
    }


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, archive: Dcmqrscp, viewer: StoreSCP,
           router_port: int) -> Iterator[RouterProcess]:
    process = RouterProcess(tmp_path_factory.mktemp("router"),
                            router_config(archive, viewer, "pass_through"))
    with started(process, router_port):
        yield process


@contextlib.contextmanager
def started(process: RouterProcess, port: int) -> Iterator[RouterProcess]:
    """Start `process` listening on `port` (the one the archive knows as DICOM-ROUTER)."""
    config = yaml.safe_load(process.config_path.read_text())
    config["listen"]["port"] = port
    process.config_path.write_text(yaml.safe_dump(config))
    process.port = port
    process.start()
    try:
        yield process
    finally:
        process.stop()


def explicit_study(study_set: StudySet) -> Any:
    return next(s for s in study_set.studies if s.transfer_syntaxes == {EXPLICIT_VR_LE})


def uids(results: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(getattr(r, keyword)) for r in results)


def clear(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path)


# --- C-FIND ---------------------------------------------------------------------------------

def test_c_find_through_the_router_matches_the_archive(router: RouterProcess,
                                                       archive: Dcmqrscp,
                                                       study_set: StudySet) -> None:
    direct = run_findscu(LOCALHOST, archive.port, "ARCHIVE", "STUDY", STUDY_KEYS)
    via = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", STUDY_KEYS)
    assert len(direct) == len(study_set.studies)
    assert uids(via, "StudyInstanceUID") == uids(direct, "StudyInstanceUID")
    by_uid = {str(d.StudyInstanceUID): d for d in direct}
    for result in via:
        assert result == by_uid[str(result.StudyInstanceUID)]  # every key, every value

    patient = study_set.patients[0]
    keys = {"PatientID": patient.patient_id, "PatientName": "", "StudyInstanceUID": ""}
    direct = run_findscu(LOCALHOST, archive.port, "ARCHIVE", "STUDY", keys)
    via = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", keys)
    assert uids(via, "StudyInstanceUID") == uids(direct, "StudyInstanceUID")
    assert len(via) == len(patient.studies)
    assert router.metric("dicom_router_dimse_requests_total", command="C-FIND",
                         status="0x0000") == 2


def study_matches(event: Any, count: int, cancelled: threading.Event, *,
                  stubborn: bool = False) -> Iterator[tuple[int, Dataset | None]]:
    """A pynetdicom C-FIND handler's answers: `count` study matches, one every 0.1 s, then
    Success; a C-CANCEL is recorded in `cancelled` and ends them with 0xFE00, unless
    `stubborn` (some archives go on after a C-CANCEL)."""
    for i in range(count):
        if event.is_cancelled:
            cancelled.set()
            if not stubborn:
                yield 0xFE00, None
                return
        if not event.assoc.is_established:
            return
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = f"1.2.3.{i + 1}"
        yield 0xFF00, match
        time.sleep(0.1)
    yield 0x0000, None


class FindArchive:
    """A pynetdicom C-FIND SCP answering `matches` matches, one every 0.1 s (dcmqrscp answers
    a whole study in milliseconds, too fast to cancel); records every query, whether it saw
    a C-CANCEL and whether an association was aborted."""

    def __init__(self, matches: int = 100, stubborn: bool = False,
                 ae_title: str = "SLOWQR") -> None:
        self.matches, self.stubborn = matches, stubborn
        self.queries = 0
        self.sent = 0
        self.cancelled = threading.Event()
        self.aborted = threading.Event()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self.port = free_port()
        self.server = self.ae.start_server(
            (LOCALHOST, self.port), block=False,
            evt_handlers=[(evt.EVT_C_FIND, self.on_find),
                          (evt.EVT_ABORTED, lambda event: self.aborted.set())])

    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        self.queries += 1
        for status, match in study_matches(event, self.matches, self.cancelled,
                                           stubborn=self.stubborn):
            self.sent += match is not None
            yield status, match

    def close(self) -> None:
        self.server.shutdown()


def _router_querying(tmp_path: Path, ae_title: str, port: int, **extra: Any) -> RouterProcess:
    """A router whose one rule sends queries and retrieves to the archive `ae_title` at
    `port`."""
    return RouterProcess(tmp_path / "r", {
        **extra,
        "destinations": {"slow": {"type": "dicom", "ae_title": ae_title, "host": LOCALHOST,
                                  "port": port}},
        "rules": [{"name": "qr", "query": ["slow"]}]}).start()


def _get_association(port: int, on_store: Any) -> Any:
    """A requester of Study Root C-GET of CT instances (Explicit VR LE), taking them with
    `on_store`."""
    from pynetdicom import build_role
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelGet,
    )

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
    return ae.associate(LOCALHOST, port, ae_title=ROUTER_AE,
                        ext_neg=[build_role(CTImageStorage, scp_role=True)],
                        evt_handlers=[(evt.EVT_C_STORE, on_store)])


def _study_query(study_uid: str = "") -> Dataset:
    """A Study Root identifier at STUDY level ("" matches every study)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return query


def _find_association(port: int, ae_title: str) -> Any:
    """An established association for Study Root C-FIND to the router at `port`."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(LOCALHOST, port, ae_title=ROUTER_AE)
    assert assoc.is_established
    return assoc


def test_c_cancel_travels_upstream_and_ends_the_query(tmp_path: Path) -> None:
    slow = FindArchive()
    router = _router_querying(tmp_path, "SLOWQR", slow.port)
    try:
        assoc = _find_association(router.port, "CANCELLER")
        query = _study_query()
        statuses: list[int] = []
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind,
                                           msg_id=7):
            statuses.append(int(status.Status) if status else -1)
            if len(statuses) == 3:
                assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelFind)
        assoc.release()
        assert statuses[-1] == 0xFE00, statuses
        assert slow.cancelled.wait(10), "the upstream never saw the C-CANCEL"
        assert statuses.count(0xFF00) < slow.matches and slow.sent < slow.matches
    finally:
        router.stop()
        slow.close()


def test_a_requester_waiting_on_a_relayed_c_find_is_not_closed_as_silent(
        tmp_path: Path) -> None:
    """network_timeout 1 s, an upstream streaming 25 matches over 2.5 s: the requester, silent
    while it waits, gets every match and Success (before: aborted after 1 s as "silent for
    network_timeout"); once the request has ended, its silence closes it as before."""
    slow = FindArchive(matches=25)
    router = _router_querying(tmp_path, "SLOWQR", slow.port,
                              listen={"network_timeout": 1})
    try:
        assoc = _find_association(router.port, "WAITER")
        statuses = [int(status.Status) if status else -1 for status, _ in
                    assoc.send_c_find(_study_query(), StudyRootQueryRetrieveInformationModelFind)]
        assert statuses == [0xFF00] * 25 + [0x0000], statuses
        assert assoc.is_established
        dropped = "dicom_router_connections_dropped_total"
        assert router.metric(dropped, reason="network_timeout") == 0
        wait_for(lambda: assoc.is_aborted, 15)
        assert router.metric(dropped, reason="network_timeout") == 1
    finally:
        router.stop()
        slow.close()


def test_c_find_fails_clearly_when_the_upstream_is_down(tmp_path: Path) -> None:
    config = {
        "destinations": {"gone": {"type": "dicom", "ae_title": "GONE", "host": LOCALHOST,
                                  "port": free_port(), "connect_timeout": 2}},
        "rules": [{"name": "qr", "query": ["gone"]}],
    }
    router = RouterProcess(tmp_path / "r", config).start()
    try:
        result = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", STUDY_KEYS,
                             check=False)
        assert result == []
        text = router.log()
        assert "no upstream answered: gone: cannot connect to gone" in text, text[-2000:]
        assert router.metric("dicom_router_dimse_requests_total", command="C-FIND",
                             status="0xA700") == 1
    finally:
        router.stop()


# --- C-GET ----------------------------------------------------------------------------------

def test_c_get_through_the_router_returns_the_same_instances(
        router: RouterProcess, archive: Dcmqrscp, study_set: StudySet, tmp_path: Path) -> None:
    study = explicit_study(study_set)
    keys = {"StudyInstanceUID": study.study_instance_uid}
    direct = run_getscu(LOCALHOST, archive.port, "ARCHIVE", "STUDY", keys, tmp_path / "direct")
    via = run_getscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", keys, tmp_path / "via")
    assert len(direct) == len(study.instances)
    assert instance_mismatches(study.instances, via) == []
    assert not list((router.spool / "relay").iterdir()), "relay files left behind"


@pytest.mark.serial  # reads the machine-wide TcpExt DelayedACKs counter
def test_c_get_from_an_archive_on_dcmtk_defaults_waits_for_no_delayed_ack(
        viewer: StoreSCP, tmp_path: Path) -> None:
    """A dcmqrscp on DCMTK's defaults (Nagle on) writes each sub-operation's PDUs as a
    header and a body, the body held until the header is acknowledged; Linux delays that
    ACK 40 ms unless asked. The worker's pynetdicom association asks after every receive
    (router/dicom/net.tune_scu_socket): 46 ms per instance before, no delayed ACK now. The
    counter is the whole machine's: other traffic may add a few."""
    require_delayed_ack_counter()  # before anything starts: skips or fails off Linux
    study_set = make_study_set(tmp_path / "study", patients=1, studies_per_patient=1,
                               series_per_study=1, instances_per_series=20, implicit_series=0)
    [study] = study_set.studies
    keys = {"StudyInstanceUID": study.study_instance_uid}
    with Dcmqrscp(tmp_path / "archive", study_set, "ARCHIVE", nagle=True) as archive:
        process = RouterProcess(tmp_path / "router", router_config(archive, viewer,
                                                                   "pass_through"))
        with started(process, free_port()):
            before = require_delayed_ack_counter()
            via = run_getscu(LOCALHOST, process.port, ROUTER_AE, "STUDY", keys,
                             tmp_path / "via")
            late = require_delayed_ack_counter() - before
    assert instance_mismatches(study.instances, via) == []
    count = len(via)
    assert late < count // 2, f"{late} delayed ACKs for {count} instances"


# --- C-MOVE ---------------------------------------------------------------------------------

def test_c_move_pass_through_delivers_to_the_requested_destination(
        router: RouterProcess, viewer: StoreSCP, study_set: StudySet) -> None:
    study = explicit_study(study_set)
    clear(viewer.output_dir)
    result = run_movescu(LOCALHOST, router.port, ROUTER_AE, "STUDY",
                         {"StudyInstanceUID": study.study_instance_uid}, "VIEWER")
    assert result.ok, result.output
    assert instance_mismatches(study.instances, viewer.received_files()) == []
    clear(viewer.output_dir)
    final = move_with_counts(router.port, study.study_instance_uid, "VIEWER")
    assert final == (0x0000, len(study.instances), 0, 0)  # the archive's counts, relayed


def move_with_counts(port: int, study_uid: str, destination: str
                     ) -> tuple[int, int, int, int]:
    """C-MOVE from pynetdicom: the final (status, completed, failed, warning)."""
    ae = AE(ae_title="COUNTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(LOCALHOST, port, ae_title=ROUTER_AE)
    assert assoc.is_established
    query = _study_query(study_uid)
    last: Any = None
    for status, _ in assoc.send_c_move(query, destination,
                                       StudyRootQueryRetrieveInformationModelMove):
        last = status
    assoc.release()
    return (int(last.Status), int(last.get("NumberOfCompletedSuboperations", -1)),
            int(last.get("NumberOfFailedSuboperations", -1)),
            int(last.get("NumberOfWarningSuboperations", -1)))


def test_c_move_relay_and_concurrent_moves_never_mix(
        tmp_path_factory: pytest.TempPathFactory, archive: Dcmqrscp, viewer: StoreSCP,
        study_set: StudySet, router: RouterProcess) -> None:
    router.stop()  # the relay router takes the port the archive knows as DICOM-ROUTER
    second = StoreSCP(tmp_path_factory.mktemp("viewer2"), "VIEWER2", extra_args=["--fork"])
    with second:
        # VIEWER2 is known to the router only: the archive cannot reach it but by the relay.
        relay = RouterProcess(tmp_path_factory.mktemp("relay-router"),
                              router_config(archive, viewer, "relay", VIEWER2=second))
        with started(relay, router.port):
            studies = list(study_set.studies)[:2]
            clear(viewer.output_dir)
            results: dict[str, Any] = {}

            def move(study: Any, target: str) -> None:
                results[target] = run_movescu(
                    LOCALHOST, relay.port, ROUTER_AE, "STUDY",
                    {"StudyInstanceUID": study.study_instance_uid}, target,
                    calling_ae=f"MOVER-{target}"[:16])

            threads = [threading.Thread(target=move, args=(studies[0], "VIEWER")),
                       threading.Thread(target=move, args=(studies[1], "VIEWER2"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert all(r.ok for r in results.values()), {k: r.output[-800:]
                                                         for k, r in results.items()}
            assert instance_mismatches(studies[0].instances, viewer.received_files()) == []
            assert instance_mismatches(studies[1].instances, second.received_files()) == []
            unknown = run_movescu(LOCALHOST, relay.port, ROUTER_AE, "STUDY",
                                  {"StudyInstanceUID": studies[0].study_instance_uid},
                                  "NOBODY", check=False)
            assert not unknown.ok and "MoveDestinationUnknown" in unknown.output
            assert not list((relay.spool / "relay").iterdir()), "relay files left behind"
            assert relay.metric("dicom_router_dimse_requests_total", command="C-MOVE",
                                status="0xA801") == 1
            clear(second.output_dir)
            final = move_with_counts(relay.port, studies[1].study_instance_uid, "VIEWER2")
            assert final == (0x0000, len(studies[1].instances), 0, 0)


ROUNDS = 16  # until an upstream's association reached another acceptor than its requester's


@pytest.mark.timeout(300)
def test_a_relayed_c_moves_instances_reach_it_through_any_acceptor(
        tmp_path_factory: pytest.TempPathFactory, archive: Dcmqrscp, viewer: StoreSCP,
        study_set: StudySet, router: RouterProcess) -> None:
    """listen.acceptors 2: the archive's C-STOREs come on an association of its own, which
    the kernel may hand to the other acceptor than the one whose requester waits (before,
    that acceptor did not know the move, took the instances as new work for the routing
    rules, and the requester got 0xA702). Moves go on until that happened at least once;
    each must bring its study to a viewer that takes one association at a time."""
    router.stop()  # the relay router takes the port the archive knows as DICOM-ROUTER
    one = StoreSCP(tmp_path_factory.mktemp("oneview"), "ONEVIEW")  # no --fork
    with one:
        relay = RouterProcess(tmp_path_factory.mktemp("acceptors-router"),
                              {**router_config(archive, viewer, "relay", ONEVIEW=one),
                               "listen": {"acceptors": 2}})
        with started(relay, router.port):
            crossed = moved = 0
            for n in range(ROUNDS):
                study = study_set.studies[n % len(study_set.studies)]
                clear(one.output_dir)
                before = relay.accepted_by_acceptor()
                result = run_movescu(LOCALHOST, relay.port, ROUTER_AE, "STUDY",
                                     {"StudyInstanceUID": study.study_instance_uid}, "ONEVIEW",
                                     calling_ae="MOVER", check=False)
                assert result.ok, result.output[-1500:] + relay.log()[-3000:]
                assert instance_mismatches(study.instances, one.received_files()) == []
                moved += len(study.instances)
                # The requester's association and the archive's.
                crossed += relay.spread_over_acceptors(before, 2)
                if crossed and n >= 3:
                    break
            assert crossed, f"in {ROUNDS} moves the archive always reached the same acceptor"
            assert not list((relay.spool / "relay").iterdir()), "relay files left behind"
            assert not [p for p in (relay.spool / "moves").iterdir()
                        if not p.name.startswith("closed-")], "moves still registered"
            assert relay.metric("dicom_router_instances_received_total",
                                result="relayed") == moved
            assert relay.metric("dicom_router_instances_received_total",
                                result="accepted") == 0, "a move's instance taken as new work"


class SlowGetArchive:
    """A pynetdicom C-GET SCP sending one instance every 0.15 s (the first after
    `first_delay`); records the C-CANCEL."""

    INSTANCES = 40

    def __init__(self, folder: Path, first_delay: float = 0.0, instances: int = INSTANCES,
                 size_bytes: int = 2000) -> None:
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            CTImageStorage,
            StudyRootQueryRetrieveInformationModelGet,
        )

        self.cancelled = threading.Event()
        self.first_delay = first_delay
        self.sent = 0
        self.files = [write_instance(folder, sop_class=str(CTImageStorage),
                                     transfer_syntax=EXPLICIT_VR_LE, size_bytes=size_bytes)
                      for _ in range(instances)]
        self.ae = AE(ae_title="SLOWGET")
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        self.ae.add_supported_context(CTImageStorage, EXPLICIT_VR_LE, scp_role=True,
                                      scu_role=True)
        self.port = free_port()
        self.server = self.ae.start_server((LOCALHOST, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_GET, self.on_get)])

    def on_get(self, event: Any) -> Iterator[Any]:
        from pydicom import dcmread

        yield len(self.files)
        time.sleep(self.first_delay)
        for path in self.files:
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            self.sent += 1
            yield 0xFF00, dcmread(path)
            time.sleep(0.15)

    def close(self) -> None:
        self.server.shutdown()


def test_c_cancel_stops_a_c_get_upstream(tmp_path: Path) -> None:
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelGet,
    )

    slow = SlowGetArchive(tmp_path / "archive")
    router = _router_querying(tmp_path, "SLOWGET", slow.port)
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    try:
        assoc = _get_association(router.port, on_store)
        assert assoc.is_established
        query = _study_query("1.2.3")
        statuses: list[int] = []
        cancel_sent = False
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet,
                                          msg_id=9):
            statuses.append(int(status.Status) if status else -1)
            # Once, after three instances and three pending statuses, in whichever order the
            # two paths bring them (a status may come before its instance's C-STORE ends).
            if not cancel_sent and len(received) >= 3 and len(statuses) >= 3:
                assoc.send_c_cancel(9, query_model=StudyRootQueryRetrieveInformationModelGet)
                cancel_sent = True
        assoc.release()
        assert statuses[-1] == 0xFE00, statuses
        assert slow.cancelled.wait(10), "the upstream never saw the C-CANCEL"
        assert 3 <= len(received) < SlowGetArchive.INSTANCES
        assert not list((router.spool / "relay").iterdir()), "relay files left behind"
    finally:
        router.stop()
        slow.close()


def test_a_c_get_requester_that_stores_a_large_instance_before_answering_gets_time_per_mb(
        tmp_path: Path) -> None:
    """The wait for a C-GET requester's C-STORE-RSP is listen.dimse_timeout plus one second
    per MB, as for a destination (README "Instances of several GB"): a viewer that writes a
    large instance before it answers had the sub-operation counted failed at
    listen.dimse_timeout. Here 3 MB and 0.5 s allow 3.5 s; the requester takes 1.5 s."""
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelGet,
    )

    archive = SlowGetArchive(tmp_path / "archive", instances=1, size_bytes=3_000_000)
    router = _router_querying(tmp_path, "SLOWGET", archive.port,
                              listen={"dimse_timeout": 0.5})
    received: list[str] = []

    def on_store(event: Any) -> int:
        time.sleep(1.5)  # a viewer writing the instance to its disk before it answers
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    try:
        assoc = _get_association(router.port, on_store)
        assert assoc.is_established
        final = None
        for status, _ in assoc.send_c_get(_study_query("1.2.3"),
                                          StudyRootQueryRetrieveInformationModelGet):
            final = status
        assoc.release()
        assert final is not None
        assert (final.Status, final.get("NumberOfCompletedSuboperations"),
                final.get("NumberOfFailedSuboperations", 0)) == (0x0000, 1, 0)
        assert len(received) == 1
    finally:
        router.stop()
        archive.close()


def test_a_c_gets_instances_go_with_the_acceptor_that_would_have_passed_them_on(
        archive: Dcmqrscp, viewer: StoreSCP, study_set: StudySet, tmp_path: Path) -> None:
    """kill -9 of the acceptor while a C-GET's requester holds its first sub-operation
    unanswered: the instances the worker put in relay/ for it (up to the relay window) are
    named after that acceptor, and the broker deletes them once it is gone, without waiting
    for the router's next start."""
    from pynetdicom import build_role
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelGet,
    )

    study = explicit_study(study_set)
    assert len(study.instances) >= 2
    config = router_config(archive, viewer, "pass_through")
    config["listen"] = {"acceptors": 1}
    router = RouterProcess(tmp_path / "router", config).start()
    relay = router.spool / "relay"
    answer = threading.Event()

    def on_store(event: Any) -> int:
        answer.wait(60)  # the requester sits on its first sub-operation
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for syntax in study.transfer_syntaxes:
        ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate(LOCALHOST, router.port, ae_title=ROUTER_AE,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        assert assoc.is_established
        query = _study_query(study.study_instance_uid)
        getter = threading.Thread(target=lambda: list(assoc.send_c_get(
            query, StudyRootQueryRetrieveInformationModelGet)), daemon=True)
        getter.start()
        assert wait_for(lambda: any(relay.iterdir()), timeout=30), router.log()[-3000:]
        acceptor = router.child_pid("acceptor-1")
        assert {writer_pid(path.name) for path in relay.iterdir()} == {acceptor}
        os.kill(acceptor, signal.SIGKILL)
        assert wait_for(lambda: not any(relay.iterdir()), timeout=30), sorted(relay.iterdir())
        assert router.metric("dicom_router_dead_process_files_cleared_total",
                             folder="relay") >= 1
        assert wait_for(lambda: router.child_pid("acceptor-1") != acceptor, timeout=30)
    finally:
        answer.set()
        assoc.abort()
        router.stop()


def test_a_c_get_that_times_out_is_cancelled_upstream_and_leaves_nothing_in_relay(
        tmp_path: Path) -> None:
    """The upstream stays silent past request_timeout (1 s here) before its first instance:
    the requester gets its failure, and the worker is told to cancel, so the upstream gets
    a C-CANCEL and no instance it sends later waits in relay/ for an acceptor that has moved
    on (before, the worker took four into relay/ and then waited for acks forever)."""
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelGet,
    )

    slow = SlowGetArchive(tmp_path / "archive", first_delay=4.0)
    router = _router_querying(tmp_path, "SLOWGET", slow.port, request_timeout=1)
    try:
        assoc = _get_association(router.port, lambda event: 0x0000)
        assert assoc.is_established
        query = _study_query("1.2.3")
        statuses = [int(status.Status) for status, _ in assoc.send_c_get(
            query, StudyRootQueryRetrieveInformationModelGet) if status]
        assoc.release()
        assert statuses and statuses[-1] not in (0x0000, 0xFF00, 0xFF01), statuses
        assert slow.cancelled.wait(15), "the upstream never saw a C-CANCEL"
        assert slow.sent == 0
        time.sleep(1)  # what the worker would have moved in after the cancel
        assert not list((router.spool / "relay").iterdir()), "relay files left behind"
        assert "no answer from the router's worker within 1s" in router.log()
    finally:
        router.stop()
        slow.close()


def _kill_broker(router: RouterProcess) -> float:
    """kill -9 of the broker (the supervisor starts another); when it was killed."""
    os.kill(router.child_pid("broker"), signal.SIGKILL)
    return time.monotonic()


def test_a_relayed_c_find_whose_broker_dies_fails_within_seconds_and_is_cancelled_upstream(
        tmp_path: Path) -> None:
    """kill -9 of the broker while a relayed C-FIND streams its matches: the routes of
    relayed requests die with it. The requester gets a failure within seconds (the acceptor
    probes after 5 s of silence and the new broker says it does not know the request), not
    at request_timeout (60 s here, 120 by default); the worker, reconnecting to the new
    broker, cancels the query upstream."""
    slow = FindArchive()
    router = _router_querying(tmp_path, "SLOWQR", slow.port, request_timeout=60)
    try:
        assoc = _find_association(router.port, "FINDER")
        query = _study_query()
        statuses: list[int] = []
        killed = 0.0
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            statuses.append(int(status.Status) if status else -1)
            if len(statuses) == 3:
                killed = _kill_broker(router)
        ended = time.monotonic() - killed
        assoc.release()
        assert killed and statuses[-1] == 0xA700, statuses[-5:]
        assert ended < 20, f"the requester waited {ended:.0f} s"
        assert slow.cancelled.wait(15), "the upstream never saw a C-CANCEL"
        assert "is unknown here (the broker restarted" in router.log()
    finally:
        router.stop()
        slow.close()


def test_a_relayed_c_get_whose_broker_dies_fails_within_seconds_and_leaves_nothing(
        tmp_path: Path) -> None:
    """The same for a C-GET: the requester's failure within seconds, a C-CANCEL upstream
    (the worker's relay no longer waits for acknowledgements that cannot come), and no
    instance left in relay/."""
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelGet,
    )

    slow = SlowGetArchive(tmp_path / "archive")
    router = _router_querying(tmp_path, "SLOWGET", slow.port, request_timeout=60)
    received: list[str] = []
    killed: list[float] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 3:
            killed.append(_kill_broker(router))
        return 0x0000

    try:
        assoc = _get_association(router.port, on_store)
        assert assoc.is_established
        query = _study_query("1.2.3")
        statuses = [int(status.Status) for status, _ in assoc.send_c_get(
            query, StudyRootQueryRetrieveInformationModelGet) if status]
        ended = time.monotonic() - killed[0]
        assoc.release()
        assert statuses[-1] == 0xA701, statuses[-5:]  # C-GET: never 0xA700 (PS3.4 C.4.3)
        assert ended < 20, f"the requester waited {ended:.0f} s"
        assert slow.cancelled.wait(15), "the upstream never saw a C-CANCEL"
        assert slow.sent < SlowGetArchive.INSTANCES
        relay = router.spool / "relay"
        assert wait_for(lambda: not any(relay.iterdir()), timeout=30), sorted(relay.iterdir())
    finally:
        router.stop()
        slow.close()
