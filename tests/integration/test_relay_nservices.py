"""N-services and the Modality Worklist through the router, against pynetdicom upstreams written
here (a RIS that records every request it gets and answers as it is told).

A pynetdicom requester sends each request through the router; what the upstream received is
compared with what was sent (datasets, attribute identifier lists, action and event types),
and what the requester got back with what the upstream answered (statuses, error comments,
returned datasets, the command fields of the response). Failures: an upstream failure status
is relayed as is, a SOP class no rule routes gets 0x0118, an upstream that is down or that
aborts gives 0x0110 with a comment, never a hang.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.service_class import ServiceClass
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    DisplaySystem,
    InstanceAvailabilityNotification,
    ModalityPerformedProcedureStep,
    ModalityPerformedProcedureStepNotification,
    ModalityPerformedProcedureStepRetrieve,
    ModalityWorklistInformationFind,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepPush,
)
from pynetdicom.transport import RequestHandler

from tests.dcmtk import LOCALHOST, free_port
from tests.integration.router_process import RouterProcess

pytestmark = pytest.mark.integration
bounded = pytest.mark.timeout(120)

ROUTER_AE = "DICOM-ROUTER"
RIS_AE = "RIS"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
UPS_CHANGE_STATE = 1
MPPS_COMPLETED_EVENT = 2
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
NO_SUCH_SOP_CLASS = 0x0118
ATTRIBUTE_LIST_ERROR = 0x0107  # a warning: some attributes were not supported
ROUTED = [ModalityPerformedProcedureStep, ModalityPerformedProcedureStepRetrieve,
          ModalityPerformedProcedureStepNotification, UnifiedProcedureStepPush,
          UnifiedProcedureStepPull, ModalityWorklistInformationFind]


# --- the upstream ---------------------------------------------------------------------------

@dataclass
class Received:
    """One request as the upstream saw it."""

    command: str
    sop_class: str
    sop_instance: str
    dataset: Dataset | None = None
    type_id: int | None = None  # N-ACTION action type, N-EVENT-REPORT event type
    tags: list[int] = field(default_factory=list)  # N-GET attribute identifier list


class GenericNServices(Association):
    """pynetdicom serves N-DELETE only for Print Management and RT Machine Verification, which
    the router does not relay: this upstream serves it for any SOP class with pynetdicom's own
    generic N-DELETE implementation (the EVT_N_DELETE handler answers)."""

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if msg.__class__.__name__ == "N_DELETE" and context_id in self._accepted_cx:
            self._is_paused = True
            try:
                ServiceClass(self)._n_delete_scp(msg, self._accepted_cx[context_id])
            finally:
                self._is_paused = False
            return
        super()._serve_request(msg, context_id)


class GenericNServicesHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.__class__ = GenericNServices
        return assoc


class RIS:
    """A pynetdicom MPPS, UPS and worklist SCP: keeps the MPPS instances it was given, records
    every request, and answers with `answer` when one is set for (command, instance)."""

    def __init__(self, worklist: list[Dataset], *, generic_delete: bool = True,
                 port: int = 0) -> None:
        self.received: list[Received] = []
        self.answers: dict[tuple[str, str], tuple[Any, Dataset | None]] = {}
        self.stalls: dict[tuple[str, str], float] = {}  # seconds to wait before answering
        self.mpps: dict[str, Dataset] = {}
        self.worklist = worklist
        self.lock = threading.Lock()
        ae = AE(ae_title=RIS_AE)
        for sop_class in ROUTED:
            ae.add_supported_context(sop_class, SYNTAXES)
        handlers = [(evt.EVT_N_CREATE, self.on_n_create), (evt.EVT_N_SET, self.on_n_set),
                    (evt.EVT_N_GET, self.on_n_get), (evt.EVT_N_ACTION, self.on_n_action),
                    (evt.EVT_N_DELETE, self.on_n_delete),
                    (evt.EVT_N_EVENT_REPORT, self.on_n_event_report),
                    (evt.EVT_C_FIND, self.on_c_find)]
        self.port = port or free_port()
        extra = {"request_handler": GenericNServicesHandler} if generic_delete else {}
        self.server = ae.make_server((LOCALHOST, self.port), evt_handlers=handlers, **extra)
        ae._servers.append(self.server)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()

    def last(self, command: str) -> Received:
        with self.lock:
            return next(r for r in reversed(self.received) if r.command == command)

    def _record(self, received: Received) -> tuple[Any, Dataset | None] | None:
        key = (received.command, received.sop_instance)
        with self.lock:
            self.received.append(received)
            stall = self.stalls.pop(key, 0.0)
        time.sleep(stall)
        with self.lock:
            return self.answers.pop(key, None)

    # Each handler answers as told, else as an MPPS/UPS SCP would.
    def on_n_create(self, event: Any) -> tuple[Any, Dataset | None]:
        instance = str(event.request.AffectedSOPInstanceUID or generate_uid())
        dataset = event.attribute_list
        told = self._record(Received("N-CREATE", str(event.request.AffectedSOPClassUID),
                                     instance, dataset))
        if told:
            return told
        with self.lock:
            self.mpps[instance] = dataset
        reply = Dataset()
        reply.PerformedProcedureStepID = dataset.PerformedProcedureStepID
        reply.PerformedProcedureStepStatus = dataset.PerformedProcedureStepStatus
        reply.PerformedStationAETitle = RIS_AE  # "created with this value"
        if not event.request.AffectedSOPInstanceUID:
            reply.AffectedSOPInstanceUID = instance  # pynetdicom moves it to the response
        return 0x0000, reply

    def on_n_set(self, event: Any) -> tuple[Any, Dataset | None]:
        instance = str(event.request.RequestedSOPInstanceUID)
        changes = event.modification_list
        told = self._record(Received("N-SET", str(event.request.RequestedSOPClassUID),
                                     instance, changes))
        if told:
            return told
        with self.lock:
            stored = self.mpps.get(instance)
            if stored is None:
                return NO_SUCH_OBJECT_INSTANCE, None
            stored.update(changes)
        reply = Dataset()
        reply.PerformedProcedureStepStatus = changes.PerformedProcedureStepStatus
        reply.PerformedProcedureStepEndDate = changes.PerformedProcedureStepEndDate
        return 0x0000, reply

    def on_n_get(self, event: Any) -> tuple[Any, Dataset | None]:
        instance = str(event.request.RequestedSOPInstanceUID)
        tags = [int(t) for t in event.attribute_identifiers]
        told = self._record(Received("N-GET", str(event.request.RequestedSOPClassUID),
                                     instance, tags=tags))
        if told:
            return told
        with self.lock:
            stored = self.mpps.get(instance)
        if stored is None:
            return NO_SUCH_OBJECT_INSTANCE, None
        reply = Dataset()
        for tag in tags:
            if tag in stored:
                reply[tag] = stored[tag]
        return 0x0000, reply

    def on_n_action(self, event: Any) -> tuple[Any, Dataset | None]:
        info = event.action_information
        told = self._record(Received("N-ACTION", str(event.request.RequestedSOPClassUID),
                                     str(event.request.RequestedSOPInstanceUID), info,
                                     type_id=event.action_type))
        if told:
            return told
        reply = Dataset()
        reply.ProcedureStepState = info.ProcedureStepState
        return 0x0000, reply

    def on_n_delete(self, event: Any) -> Any:
        told = self._record(Received("N-DELETE", str(event.request.RequestedSOPClassUID),
                                     str(event.request.RequestedSOPInstanceUID)))
        return told[0] if told else 0x0000

    def on_n_event_report(self, event: Any) -> tuple[Any, Dataset | None]:
        told = self._record(Received("N-EVENT-REPORT", str(event.request.AffectedSOPClassUID),
                                     str(event.request.AffectedSOPInstanceUID),
                                     event.event_information, type_id=event.event_type))
        if told:
            return told
        reply = Dataset()
        reply.PerformedProcedureStepStatus = "COMPLETED"
        return 0x0000, reply

    def on_c_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        self._record(Received("C-FIND", str(event.request.AffectedSOPClassUID), "", query))
        wanted = query.ScheduledProcedureStepSequence[0].Modality
        for item in self.worklist:
            if not wanted or item.ScheduledProcedureStepSequence[0].Modality == wanted:
                yield 0xFF00, item
        yield 0x0000, None


# --- the requester --------------------------------------------------------------------------

class Requester:
    """A pynetdicom association to the router that also keeps every response's command set
    (the fields pynetdicom's send_* do not return: Affected SOP Instance UID, Error ID...)."""

    def __init__(self, port: int, sop_classes: list[str], syntax: str = ExplicitVRLittleEndian,
                 ae_title: str = "MODALITY") -> None:
        self.commands: list[Dataset] = []
        ae = AE(ae_title=ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30  # never a hang
        for sop_class in sop_classes:
            ae.add_requested_context(sop_class, [syntax])
        self.assoc = ae.associate(LOCALHOST, port, ae_title=ROUTER_AE,
                                  evt_handlers=[(evt.EVT_DIMSE_RECV, self._on_receive)])
        assert self.assoc.is_established

    def _on_receive(self, event: Any) -> None:
        self.commands.append(event.message.command_set)

    @property
    def last_command(self) -> Dataset:
        return self.commands[-1]

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def __enter__(self) -> Requester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- datasets -------------------------------------------------------------------------------

def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def mpps_in_progress(study_uid: str) -> Dataset:
    """An MPPS N-CREATE Attribute List as a CT would send it (PS3.4 F.7.2.1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    step = Dataset()
    step.StudyInstanceUID = study_uid
    step.ReferencedStudySequence = []
    step.AccessionNumber = "ACC20240611"
    step.RequestedProcedureID = "RP0042"
    step.RequestedProcedureDescription = "CT THORAX MIT KONTRASTMITTEL"
    step.ScheduledProcedureStepID = "SPS0042"
    step.ScheduledProcedureStepDescription = "Thorax"
    step.ScheduledProtocolCodeSequence = [code("P5-08000", "SRT", "CT of chest")]
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "PID-7781"
    ds.IssuerOfPatientID = "HOSPITAL"
    ds.PatientBirthDate = "19630412"
    ds.PatientSex = "M"
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS-0001"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedStationName = "CT ROOM 1"
    ds.PerformedLocation = "RADIOLOGY"
    ds.PerformedProcedureStepStartDate = "20240611"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT THORAX"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = [code("24627-2", "LN", "CT Chest")]
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def mpps_completed(series_uid: str, images: list[str]) -> Dataset:
    """An MPPS N-SET Modification List that completes the step (PS3.4 F.7.2.2)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20240611"
    ds.PerformedProcedureStepEndTime = "103210"
    series = Dataset()
    series.PerformingPhysicianName = "Schäfer^Anna"
    series.ProtocolName = "THORAX KM"
    series.OperatorsName = "Tech^One"
    series.SeriesInstanceUID = series_uid
    series.SeriesDescription = "Thorax 1.0 B31f"
    series.RetrieveAETitle = "PACS"
    refs = []
    for uid in images:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = uid
        refs.append(ref)
    series.ReferencedImageSequence = refs
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


def worklist_item(n: int, modality: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = f"ACC{n:04d}"
    ds.PatientName = f"Patient^{n}"
    ds.PatientID = f"PID{n:04d}"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "FMO"[n % 3]
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{n}"
    ds.RequestedProcedureDescription = f"{modality} EXAM {n}"
    ds.RequestedProcedureID = f"RP{n}"
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = f"{modality}01"
    step.ScheduledProcedureStepStartDate = "20240611"
    step.ScheduledProcedureStepStartTime = f"{8 + n:02d}0000"
    step.ScheduledPerformingPhysicianName = "Doc^Tor"
    step.ScheduledProcedureStepDescription = f"{modality} step {n}"
    step.ScheduledProcedureStepID = f"SPS{n}"
    ds.ScheduledProcedureStepSequence = [step]
    return ds


WORKLIST = [worklist_item(n, "CT" if n % 2 else "MR") for n in range(1, 8)]


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ris() -> Iterator[RIS]:
    upstream = RIS(WORKLIST)
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, ris: RIS) -> Iterator[RouterProcess]:
    config = {
        "destinations": {
            "ris": {"type": "dicom", "ae_title": RIS_AE, "host": LOCALHOST, "port": ris.port,
                    "dimse_timeout": 15},
            "gone": {"type": "dicom", "ae_title": "GONE", "host": LOCALHOST,
                     "port": free_port(), "connect_timeout": 2},
        },
        "rules": [
            {"name": "ris", "match": {"sop_class": [str(uid) for uid in ROUTED]},
             "query": ["ris"]},
            {"name": "availability", "match": {"sop_class": "InstanceAvailabilityNotification"},
             "query": ["gone"]},
        ],
        "request_timeout": 30,
    }
    with RouterProcess(tmp_path_factory.mktemp("router"), config) as process:
        yield process


def status_of(status: Dataset) -> int:
    assert "Status" in status, "no response (timeout or abort)"
    return int(status.Status)


# --- MPPS: N-CREATE, N-SET, N-GET -----------------------------------------------------------

@bounded
def test_an_mpps_n_set_follows_its_n_create_to_the_upstream_that_took_it(
        tmp_path: Path) -> None:
    """`query: [ris1, ris2]` with ris1 down: the N-CREATE goes to ris2. ris1 comes back; the
    N-SET still goes to ris2, which holds the step, and completes it (before: it went to ris1,
    which answered 0x0112, and the step stayed IN PROGRESS on ris2)."""
    ris2 = RIS(WORKLIST)
    port1 = free_port()
    config = {
        "destinations": {
            "ris1": {"type": "dicom", "ae_title": RIS_AE, "host": LOCALHOST, "port": port1,
                     "connect_timeout": 2},
            "ris2": {"type": "dicom", "ae_title": RIS_AE, "host": LOCALHOST,
                     "port": ris2.port}},
        "rules": [{"name": "mpps", "match": {"sop_class": "ModalityPerformedProcedureStep"},
                   "query": ["ris1", "ris2"]}],
        "request_timeout": 30}
    ris1: RIS | None = None
    instance = generate_uid()
    try:
        with RouterProcess(tmp_path / "router", config) as router, \
                Requester(router.port, [ModalityPerformedProcedureStep]) as scu:
            status, _ = scu.assoc.send_n_create(mpps_in_progress(generate_uid()),
                                                ModalityPerformedProcedureStep, instance)
            assert status_of(status) == 0x0000
            assert instance in ris2.mpps
            ris1 = RIS(WORKLIST, port=port1)
            status, _ = scu.assoc.send_n_set(mpps_completed(generate_uid(), [generate_uid()]),
                                             ModalityPerformedProcedureStep, instance)
            assert status_of(status) == 0x0000
            assert ris2.mpps[instance].PerformedProcedureStepStatus == "COMPLETED"
            assert [r.command for r in ris1.received] == []
            assert len(list((router.spool / "n-instances").iterdir())) == 1
    finally:
        ris2.close()
        if ris1 is not None:
            ris1.close()


@bounded
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                         ids=["explicit", "implicit"])
def test_mpps_create_and_complete_through_the_router(router: RouterProcess, ris: RIS,
                                                     syntax: str) -> None:
    instance = generate_uid()
    created = mpps_in_progress(generate_uid())
    completed = mpps_completed(generate_uid(), [generate_uid(), generate_uid()])
    with Requester(router.port, [ModalityPerformedProcedureStep], syntax) as scu:
        status, reply = scu.assoc.send_n_create(created, ModalityPerformedProcedureStep,
                                                instance)
        assert status_of(status) == 0x0000
        got = ris.last("N-CREATE")
        assert (got.sop_class, got.sop_instance) == (ModalityPerformedProcedureStep, instance)
        assert got.dataset == created  # every attribute, sequences and UTF-8 names included
        assert got.dataset.PatientName == "Müller^Jürgen"
        expected = Dataset()
        expected.PerformedProcedureStepID = "PPS-0001"
        expected.PerformedProcedureStepStatus = "IN PROGRESS"
        expected.PerformedStationAETitle = RIS_AE
        assert reply == expected
        response = scu.last_command
        assert response.AffectedSOPClassUID == ModalityPerformedProcedureStep
        assert response.AffectedSOPInstanceUID == instance

        status, reply = scu.assoc.send_n_set(completed, ModalityPerformedProcedureStep,
                                             instance)
        assert status_of(status) == 0x0000
        got = ris.last("N-SET")
        assert (got.sop_class, got.sop_instance) == (ModalityPerformedProcedureStep, instance)
        assert got.dataset == completed
        assert reply is not None
        assert reply.PerformedProcedureStepStatus == "COMPLETED"
        assert reply.PerformedProcedureStepEndDate == "20240611"
        assert len(reply) == 2
        assert scu.last_command.AffectedSOPInstanceUID == instance
    assert ris.mpps[instance].PerformedProcedureStepStatus == "COMPLETED"


@bounded
def test_mpps_create_without_an_instance_uid_returns_the_upstreams(router: RouterProcess,
                                                                   ris: RIS) -> None:
    """N-CREATE may leave the instance UID to the SCP (PS3.7 10.1.5): the response must carry
    the one the upstream assigned."""
    with Requester(router.port, [ModalityPerformedProcedureStep]) as scu:
        status, _ = scu.assoc.send_n_create(mpps_in_progress(generate_uid()),
                                            ModalityPerformedProcedureStep, None)
        assert status_of(status) == 0x0000
        assigned = ris.last("N-CREATE").sop_instance
        assert scu.last_command.AffectedSOPInstanceUID == assigned
        assert assigned in ris.mpps


@bounded
def test_mpps_failure_status_is_relayed_as_is(router: RouterProcess, ris: RIS) -> None:
    instance = generate_uid()
    refusal = Dataset()
    refusal.Status = PROCESSING_FAILURE
    refusal.ErrorComment = "MPPS already COMPLETED; no changes"
    refusal.ErrorID = 0x0042
    ris.answers[("N-SET", instance)] = (refusal, None)
    with Requester(router.port, [ModalityPerformedProcedureStep]) as scu:
        status, reply = scu.assoc.send_n_set(mpps_completed(generate_uid(), []),
                                             ModalityPerformedProcedureStep, instance)
        assert status_of(status) == PROCESSING_FAILURE
        assert status.ErrorComment == "MPPS already COMPLETED; no changes"
        assert status.get("ErrorID") == 0x0042
        assert reply is None

        # A status the upstream chose among the N-SET failures, with no comment at all.
        status, _ = scu.assoc.send_n_set(mpps_completed(generate_uid(), []),
                                         ModalityPerformedProcedureStep, generate_uid())
        assert status_of(status) == NO_SUCH_OBJECT_INSTANCE
        assert "ErrorComment" not in status

        # A warning: the upstream ignored attributes it names, and still answers with a list.
        warning = Dataset()
        warning.Status = ATTRIBUTE_LIST_ERROR
        warning.AttributeIdentifierList = [Tag("OperatorsName"), Tag("ProtocolName")]
        kept = Dataset()
        kept.PerformedProcedureStepStatus = "COMPLETED"
        ris.answers[("N-SET", instance)] = (warning, kept)
        status, reply = scu.assoc.send_n_set(mpps_completed(generate_uid(), []),
                                             ModalityPerformedProcedureStep, instance)
        assert status_of(status) == ATTRIBUTE_LIST_ERROR
        assert list(status.AttributeIdentifierList) == [Tag("OperatorsName"),
                                                        Tag("ProtocolName")]
        assert reply == kept


@bounded
def test_n_get_asks_the_upstream_for_exactly_the_requested_attributes(
        router: RouterProcess, ris: RIS) -> None:
    instance = generate_uid()
    created = mpps_in_progress(generate_uid())
    tags = [Tag("PerformedProcedureStepStatus"), Tag("PatientName"), Tag("PatientID"),
            Tag("ScheduledStepAttributesSequence"), Tag("PerformedProcedureStepStartDate")]
    with Requester(router.port, [ModalityPerformedProcedureStep,
                                 ModalityPerformedProcedureStepRetrieve]) as scu:
        assert status_of(scu.assoc.send_n_create(created, ModalityPerformedProcedureStep,
                                                 instance)[0]) == 0x0000
        status, reply = scu.assoc.send_n_get(tags, ModalityPerformedProcedureStepRetrieve,
                                             instance)
        assert status_of(status) == 0x0000
        got = ris.last("N-GET")
        assert got.sop_class == ModalityPerformedProcedureStepRetrieve
        assert got.sop_instance == instance
        assert got.tags == [int(t) for t in tags]
        assert reply is not None
        assert sorted(reply.keys()) == sorted(tags)
        for tag in tags:
            assert reply[tag].value == created[tag].value, tag
        assert reply.PatientName == "Müller^Jürgen"
        assert scu.last_command.AffectedSOPInstanceUID == instance

        status, reply = scu.assoc.send_n_get([Tag("PatientID")],
                                             ModalityPerformedProcedureStepRetrieve,
                                             instance)  # a single tag: VM 1 on the wire
        assert status_of(status) == 0x0000
        assert ris.last("N-GET").tags == [int(Tag("PatientID"))]
        assert reply is not None and reply.PatientID == "PID-7781" and len(reply) == 1


# --- UPS N-ACTION, N-DELETE, MPPS N-EVENT-REPORT ---------------------------------------------

@bounded
def test_n_action_carries_the_action_type_and_information(router: RouterProcess,
                                                          ris: RIS) -> None:
    instance = generate_uid()
    action = Dataset()
    action.ProcedureStepState = "IN PROGRESS"
    action.TransactionUID = generate_uid()
    with Requester(router.port, [UnifiedProcedureStepPull]) as scu:
        status, reply = scu.assoc.send_n_action(action, UPS_CHANGE_STATE,
                                                UnifiedProcedureStepPull, instance)
        assert status_of(status) == 0x0000
        got = ris.last("N-ACTION")
        assert (got.sop_class, got.sop_instance) == (UnifiedProcedureStepPull, instance)
        assert got.type_id == UPS_CHANGE_STATE
        assert got.dataset == action
        assert reply is not None and reply.ProcedureStepState == "IN PROGRESS"
        assert len(reply) == 1
        response = scu.last_command
        assert response.ActionTypeID == UPS_CHANGE_STATE
        assert response.AffectedSOPInstanceUID == instance

        refusal = Dataset()
        refusal.Status = 0xC300
        refusal.ErrorComment = "UPS may no longer be updated"
        ris.answers[("N-ACTION", instance)] = (refusal, None)
        status, reply = scu.assoc.send_n_action(action, UPS_CHANGE_STATE,
                                                UnifiedProcedureStepPull, instance)
        assert status_of(status) == 0xC300
        assert status.ErrorComment == "UPS may no longer be updated"
        assert reply is None


@bounded
def test_n_delete_reaches_the_upstream(router: RouterProcess, ris: RIS) -> None:
    instance = generate_uid()
    with Requester(router.port, [UnifiedProcedureStepPush]) as scu:
        status = scu.assoc.send_n_delete(UnifiedProcedureStepPush, instance)
        assert status_of(status) == 0x0000
        got = ris.last("N-DELETE")
        assert (got.sop_class, got.sop_instance) == (UnifiedProcedureStepPush, instance)
        assert scu.last_command.AffectedSOPInstanceUID == instance

        ris.answers[("N-DELETE", instance)] = (NO_SUCH_OBJECT_INSTANCE, None)
        status = scu.assoc.send_n_delete(UnifiedProcedureStepPush, instance)
        assert status_of(status) == NO_SUCH_OBJECT_INSTANCE


@bounded
def test_n_event_report_from_the_requester_to_the_upstream(router: RouterProcess,
                                                           ris: RIS) -> None:
    """The requester is the SCP of MPPS Notification here: it reports to the upstream."""
    instance = generate_uid()
    info = Dataset()
    info.PerformedProcedureStepStatus = "COMPLETED"
    info.PerformedProcedureStepID = "PPS-0001"
    with Requester(router.port, [ModalityPerformedProcedureStepNotification]) as scu:
        status, reply = scu.assoc.send_n_event_report(
            info, MPPS_COMPLETED_EVENT, ModalityPerformedProcedureStepNotification, instance)
        assert status_of(status) == 0x0000
        got = ris.last("N-EVENT-REPORT")
        assert got.sop_class == ModalityPerformedProcedureStepNotification
        assert got.sop_instance == instance
        assert got.type_id == MPPS_COMPLETED_EVENT
        assert got.dataset == info
        assert reply is not None and reply.PerformedProcedureStepStatus == "COMPLETED"
        response = scu.last_command
        assert response.EventTypeID == MPPS_COMPLETED_EVENT
        assert response.AffectedSOPInstanceUID == instance


# --- failures -------------------------------------------------------------------------------

@bounded
def test_a_sop_class_no_rule_routes_gets_no_such_sop_class(router: RouterProcess,
                                                           ris: RIS) -> None:
    before = len(ris.received)
    with Requester(router.port, [DisplaySystem]) as scu:
        status, reply = scu.assoc.send_n_get([Tag("Manufacturer")], DisplaySystem,
                                             "1.2.840.10008.5.1.1.40.1")
        assert status_of(status) == NO_SUCH_SOP_CLASS
        assert "no routing rule" in status.ErrorComment
        assert reply is None
        assert scu.assoc.is_established  # the association goes on
    assert len(ris.received) == before
    assert router.metric("dicom_router_dimse_requests_total", command="N-GET",
                         status="0x0118") == 1


@bounded
def test_an_upstream_that_is_down_gives_processing_failure(router: RouterProcess) -> None:
    info = Dataset()
    info.PatientID = "PID-7781"
    info.StudyInstanceUID = generate_uid()
    with Requester(router.port, [InstanceAvailabilityNotification]) as scu:
        status, reply = scu.assoc.send_n_create(info, InstanceAvailabilityNotification,
                                                generate_uid())
        assert status_of(status) == PROCESSING_FAILURE
        assert "no upstream available" in status.ErrorComment
        assert "gone" in status.ErrorComment
        assert reply is None


@bounded
def test_an_upstream_that_aborts_or_stalls_gives_processing_failure(tmp_path: Path) -> None:
    """A stock pynetdicom MPPS SCP aborts the association on an N-DELETE (no service for it),
    and one that stalls past the destination's dimse_timeout is given up on: either way the
    requester gets a failure with a comment that says which, and its association goes on."""
    strict = RIS(WORKLIST, generic_delete=False)
    config = {
        "destinations": {"ris": {"type": "dicom", "ae_title": RIS_AE, "host": LOCALHOST,
                                 "port": strict.port, "dimse_timeout": 3}},
        "rules": [{"name": "ris", "query": ["ris"]}],
        "request_timeout": 30,
    }
    try:
        with RouterProcess(tmp_path / "r", config) as router, \
                Requester(router.port, [ModalityPerformedProcedureStep]) as scu:
            status = scu.assoc.send_n_delete(ModalityPerformedProcedureStep, generate_uid())
            assert status_of(status) == PROCESSING_FAILURE
            assert status.ErrorComment == "ris aborted the association without answering"

            stalled = generate_uid()
            strict.stalls[("N-CREATE", stalled)] = 6.0
            status, _ = scu.assoc.send_n_create(mpps_in_progress(generate_uid()),
                                                ModalityPerformedProcedureStep, stalled)
            assert status_of(status) == PROCESSING_FAILURE
            assert status.ErrorComment == "ris did not answer in time"

            status, _ = scu.assoc.send_n_create(mpps_in_progress(generate_uid()),
                                                ModalityPerformedProcedureStep, generate_uid())
            assert status_of(status) == 0x0000
    finally:
        strict.close()


# --- Modality Worklist ----------------------------------------------------------------------

def worklist_query(modality: str) -> Dataset:
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 100"
    for keyword in ("AccessionNumber", "PatientName", "PatientID", "PatientBirthDate",
                    "PatientSex", "StudyInstanceUID", "RequestedProcedureDescription",
                    "RequestedProcedureID"):
        setattr(query, keyword, "")
    step = Dataset()
    step.Modality = modality
    for keyword in ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                    "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
                    "ScheduledProcedureStepDescription", "ScheduledProcedureStepID"):
        setattr(step, keyword, "")
    query.ScheduledProcedureStepSequence = [step]
    return query


def find(port: int, called_ae: str, query: Dataset) -> tuple[list[Dataset], list[int]]:
    ae = AE(ae_title="CT01")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ModalityWorklistInformationFind, SYNTAXES)
    assoc = ae.associate(LOCALHOST, port, ae_title=called_ae)
    assert assoc.is_established
    results, statuses = [], []
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            statuses.append(int(status.Status) if "Status" in status else -1)
            if identifier is not None:
                results.append(identifier)
    finally:
        assoc.release()
    return results, statuses


@bounded
def test_modality_worklist_find_streams_the_upstreams_matches(router: RouterProcess,
                                                              ris: RIS) -> None:
    query = worklist_query("CT")
    direct, direct_statuses = find(ris.port, RIS_AE, query)
    via, statuses = find(router.port, ROUTER_AE, query)
    expected = [item for item in WORKLIST if item.ScheduledProcedureStepSequence[0].Modality
                == "CT"]
    assert len(expected) == 4
    assert direct == expected
    assert via == direct  # same items, same order, every value
    assert statuses == direct_statuses == [0xFF00] * 4 + [0x0000]
    assert ris.last("C-FIND").dataset == query
    everything, _ = find(router.port, ROUTER_AE, worklist_query(""))
    assert everything == WORKLIST
