"""Storage commitment (N-ACTION) requested with pynetdicom: ``CommitmentRequester`` sends
the request and collects the N-EVENT-REPORT that answers it, on an association of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from pydicom.dataset import Dataset
from pydicom.uid import (
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from tests.dcmtk import LOCALHOST, free_ports

# --------------------------------------------------------------------------------------------
# Storage commitment (pynetdicom)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitmentReport:
    """One N-EVENT-REPORT of the Storage Commitment Push Model."""

    event_type_id: int  # 1: all committed, 2: failures exist
    transaction_uid: str
    committed: tuple[tuple[str, str], ...]  # (SOP class, SOP instance)
    failed: tuple[tuple[str, str, int], ...]  # (SOP class, SOP instance, failure reason)
    reporter_ae: str  # the peer AE of the association that carried the report
    same_association: bool  # True when it came on the association of the N-ACTION


def _references(items: Iterable[Dataset], with_reason: bool) -> tuple[Any, ...]:
    out = []
    for item in items:
        pair = (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        out.append((*pair, int(item.FailureReason)) if with_reason else pair)
    return tuple(out)


class CommitmentRequester:
    """A storage commitment SCU (Evidence Creator) with a listener for the reports.

    ``with CommitmentRequester("MODALITY") as scu:`` listens on ``scu.port``; the SCP must
    know that AE, host and port to report on a new association (the IHE way, and what
    Orthanc does). ``request()`` sends the N-ACTION; ``wait_report()`` returns the
    N-EVENT-REPORT, from a new association or from the N-ACTION's own (``hold``).
    """

    def __init__(self, ae_title: str = "STGCMTSCU", *, port: int | None = None) -> None:
        self.ae_title = ae_title
        self.port = port or 0
        self._fixed_port = port is not None
        self._reports: dict[str, CommitmentReport] = {}
        self._arrived = threading.Condition()
        self._server: Any = None
        self._requesting: set[Any] = set()

    def __enter__(self) -> Self:
        listener = AE(self.ae_title)
        # The SCP opens the report association with itself as the SCP role: accept that.
        listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, self._on_report)]
        for _ in range(1 if self._fixed_port else 3):
            port = self.port if self._fixed_port else free_ports(1)[0]
            try:
                self._server = listener.start_server(
                    (LOCALHOST, port), block=False, evt_handlers=handlers
                )
            except OSError:
                continue
            self.port = port
            return self
        raise RuntimeError("storage commitment listener could not bind a port")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_report(self, event: Event) -> tuple[int, None]:
        info = event.event_information
        assoc = event.assoc
        peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
        report = CommitmentReport(
            event_type_id=event.event_type or 0,
            transaction_uid=str(info.TransactionUID),
            committed=_references(info.get("ReferencedSOPSequence", []), False),
            failed=_references(info.get("FailedSOPSequence", []), True),
            reporter_ae=str(peer.ae_title),
            same_association=event.assoc in self._requesting,
        )
        with self._arrived:
            self._reports[report.transaction_uid] = report
            self._arrived.notify_all()
        return 0x0000, None  # no Event Reply: Orthanc insists on none

    def request(
        self,
        host: str,
        port: int,
        called_ae: str,
        references: Iterable[tuple[str, str]],
        *,
        transaction_uid: str | None = None,
        hold: float = 0.0,
        timeout: float = 30.0,
    ) -> str:
        """Send one N-ACTION (Request Storage Commitment); return its Transaction UID.

        references are (SOP class, SOP instance) pairs. With ``hold`` the association stays
        open up to that many seconds for a report on it. Raises RuntimeError unless the
        N-ACTION response is Success.
        """
        uid = transaction_uid or generate_uid()
        action = Dataset()
        action.TransactionUID = uid
        action.ReferencedSOPSequence = [_reference(c, i) for c, i in references]
        requester = AE(self.ae_title)
        requester.add_requested_context(StorageCommitmentPushModel)
        requester.acse_timeout = requester.dimse_timeout = requester.network_timeout = timeout
        assoc = requester.associate(
            host,
            port,
            ae_title=called_ae,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )
        if not assoc.is_established:
            raise RuntimeError(f"association to {called_ae} at {host}:{port} failed")
        self._requesting.add(assoc)
        try:
            status, _ = assoc.send_n_action(
                action, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
            )
            if status.get("Status") != 0x0000:
                raise RuntimeError(f"N-ACTION answered {status or 'nothing (aborted)'}")
            if hold > 0:
                self._wait(uid, hold)
        finally:
            if assoc.is_established:
                assoc.release()
            self._requesting.discard(assoc)
        return uid

    def _wait(self, transaction_uid: str, timeout: float) -> CommitmentReport | None:
        with self._arrived:
            self._arrived.wait_for(lambda: transaction_uid in self._reports, timeout)
            return self._reports.get(transaction_uid)

    def wait_report(self, transaction_uid: str, timeout: float = 30.0) -> CommitmentReport:
        """The report for transaction_uid; TimeoutError if none arrives within timeout."""
        report = self._wait(transaction_uid, timeout)
        if report is None:
            raise TimeoutError(f"no N-EVENT-REPORT for {transaction_uid} in {timeout} s")
        return report


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item
