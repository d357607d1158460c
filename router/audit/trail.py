"""The DICOM audit trail: PS3.15 A.5 audit messages as JSON lines, optionally to syslog.

Messages use the element and attribute names of the DICOM Audit Message schema (A.5.1, from
RFC 3881); router/audit/schemas/audit-message.schema.json describes the JSON form and
docs/audit.md which router event becomes which message.

The trail is the one place that may hold identifiers of studies (and a Patient ID where the
standard's message asks for it). Nothing here writes them to the ordinary log: warnings name
the audit file, the syslog server and the error, never a message's content.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

from router.audit.codes import ALERT_TYPES, NODE_AUTHENTICATION, SecurityAlertKind
from router.audit.encoding import to_json_line, to_xml
from router.audit.json_lines_file import JsonLinesFile
from router.audit.messages import (
    AuditMessage,
    LocalApplication,
    RemoteNode,
    application_activity,
    instances_forwarded,
    instances_transferred,
    security_alert,
    user_authentication,
)
from router.audit.relayed import (
    PROCEDURE_ACTIONS,
    RelayedRequest,
    procedure_record,
    query,
    retrieve,
)
from router.audit.syslog_sender import CLOSE_SECONDS, OnceWarner, SyslogSender, format_rfc5424
from router.core import metrics
from router.core.audit_config import AuditConfig

log = logging.getLogger(__name__)

SYSLOG_SEVERITY: dict[str, int] = {"0": 5, "4": 4, "8": 3, "12": 2}  # notice .. critical
SYSLOG_MSGID = {"json": "DICOM+AUDIT+JSON", "xml": "IHE+RFC-3881"}
# An open association's received instances are audited at least this often (docs/audit.md:
# what a killed acceptor can lose).
TALLY_FLUSH_SECONDS = 60.0


# ---------------------------------------------------------------- the trail


class AuditTrail:
    """Records audit events. Thread-safe; no method raises or waits on the network.

    A failing disk or syslog server is reported once in the ordinary log (without message
    content) and the router goes on.
    """

    def __init__(self, config: AuditConfig, router_ae: str) -> None:
        self.config = config
        self.app = LocalApplication(
            ae_title=router_ae,
            source_id=config.source_id or router_ae,
            site_id=config.enterprise_site_id,
        )
        self._warn = OnceWarner(log)
        self._closed = False
        self._file: JsonLinesFile | None = None
        self._syslog: SyslogSender | None = None
        if not config.enabled:
            return
        # Both series exist at 0 from the start: increase() in DicomRouterAuditMessagesLost
        # needs a sample before the first loss.
        for sink in ("file", "syslog"):
            metrics.AUDIT_FAILURES.labels(sink)
        self._file = JsonLinesFile(config.path, fsync=config.fsync)
        if config.syslog is not None:
            try:
                self._syslog = SyslogSender(config.syslog)
            except Exception as exc:  # e.g. no thread can be started
                self._warn.warn("syslog", "audit syslog disabled: %s", exc)

    @property
    def enabled(self) -> bool:
        return self.config.enabled and not self._closed

    @property
    def syslog_dropped(self) -> int:
        """Messages that never reached the syslog server (all are in the JSON lines file)."""
        return 0 if self._syslog is None else self._syslog.dropped

    def application_started(self) -> None:
        self._emit(lambda: application_activity(self.app, started=True))

    def application_stopped(self) -> None:
        self._emit(lambda: application_activity(self.app, started=False))

    def association_accepted(
        self, calling_ae: str, called_ae: str, peer_address: str,
        tls_certificate: str | None = None,
    ) -> None:
        """`tls_certificate`: the peer's, as router/core/dn_text.py certificate_text writes it."""
        self._emit(lambda: user_authentication(
            self.app, calling_ae=calling_ae, called_ae=called_ae,
            peer_address=peer_address, tls_certificate=tls_certificate))

    def association_rejected(
        self,
        calling_ae: str,
        called_ae: str,
        peer_address: str,
        reason: str,
        *,
        security: bool = True,
        tls_certificate: str | None = None,
    ) -> None:
        """A rejected association: a Security Alert (Node Authentication) by default.

        security=False for rejections that are not about who the peer is (temporary
        congestion, association limit): those become a failed Login (outcome 4) instead.
        """
        detail = f"association rejected: {reason} (calling AE {calling_ae!r}, " \
                 f"called AE {called_ae!r})"
        if not security:
            self._emit(lambda: user_authentication(
                self.app, calling_ae=calling_ae, called_ae=called_ae,
                peer_address=peer_address, tls_certificate=tls_certificate, outcome="4",
                description=detail))
            return
        self._emit(lambda: security_alert(
            self.app, alert_type=ALERT_TYPES["association_rejected"], detail=detail,
            peer_address=peer_address, calling_ae=calling_ae, tls_certificate=tls_certificate))

    def user_refused(
        self, calling_ae: str, called_ae: str, peer_address: str, user: str | None,
        reason: str, tls_certificate: str | None = None,
    ) -> None:
        """A refused A-ASSOCIATE-RQ user identity: a failed User Authentication naming the
        user (None for identity types without a user name: their token is a credential)."""
        self._emit(lambda: user_authentication(
            self.app, calling_ae=calling_ae, called_ae=called_ae, peer_address=peer_address,
            tls_certificate=tls_certificate, outcome="4", user=user,
            description=f"user identity refused: {reason}"))

    def instances_transferred(
        self,
        calling_ae: str,
        called_ae: str,
        peer_address: str,
        study_uid: str,
        sop_classes: Mapping[str, int],
        outcome_ok: bool,
        *,
        patient_id: str | None = None,
        description: str | None = None,
    ) -> None:
        counts = dict(sop_classes)  # the caller may reuse its mapping
        self._emit(lambda: instances_transferred(
            self.app, calling_ae=calling_ae, called_ae=called_ae, peer_address=peer_address,
            study_uid=study_uid, sop_classes=counts, outcome_ok=outcome_ok,
            patient_id=patient_id, description=description))

    def instances_forwarded(
        self,
        destination: RemoteNode,
        study_uid: str,
        sop_classes: Mapping[str, int],
        outcome_ok: bool,
        *,
        patient_id: str | None = None,
        description: str | None = None,
        anonymized: bool = False,
    ) -> None:
        """Instances of one study sent on to `destination` (outcome_ok), or dead-lettered;
        `anonymized`: sent de-identified."""
        counts = dict(sop_classes)
        self._emit(lambda: instances_forwarded(
            self.app, destination=destination, study_uid=study_uid, sop_classes=counts,
            outcome_ok=outcome_ok, patient_id=patient_id, description=description,
            anonymized=anonymized))

    def relayed_request(self, request: RelayedRequest) -> None:
        """A relayed C-FIND (Query), C-GET or C-MOVE (DICOM Instances Transferred), MPPS
        N-CREATE or N-SET (Procedure Record), ended."""
        build = query if request.command == "C-FIND" else \
            procedure_record if request.command in PROCEDURE_ACTIONS else retrieve
        self._emit(lambda: build(self.app, request))

    def security_alert(
        self,
        kind: SecurityAlertKind,
        detail: str,
        peer_address: str | None,
        calling_ae: str | None = None,
    ) -> None:
        # An unknown kind is still recorded: losing a security alert is worse than a vague one.
        alert_type = ALERT_TYPES.get(str(kind), NODE_AUTHENTICATION)
        self._emit(lambda: security_alert(
            self.app, alert_type=alert_type, detail=f"{kind}: {detail}",
            peer_address=peer_address, calling_ae=calling_ae))

    def record(self, message: AuditMessage) -> None:
        """Write one built message to the file and queue it for syslog."""
        if not self.config.enabled:
            return
        if self._closed:  # e.g. an association settled after the stop: never silently
            metrics.AUDIT_FAILURES.labels("file").inc()
            self._warn.warn("closed", "an audit message came after the audit trail %s was "
                            "closed; it is lost", self.config.path)
            return
        if self._file is not None:
            try:
                self._file.append(to_json_line(message))
            except (OSError, ValueError) as exc:
                metrics.AUDIT_FAILURES.labels("file").inc()
                self._warn.warn("file", "cannot append to the audit trail %s (%s); audit "
                                "messages are being lost", self.config.path, exc)
            else:
                self._warn.recovered("file", "audit trail %s is written again", self.config.path)
        if self._syslog is not None:
            try:
                self._syslog.submit(self._syslog_message(message))
            except Exception as exc:
                self._warn.warn("syslog-format", "cannot format an audit syslog message (%s)",
                                type(exc).__name__)

    def _syslog_message(self, message: AuditMessage) -> bytes:
        assert self.config.syslog is not None
        fmt = self.config.syslog_format
        outcome = str(message["AuditMessage"]["EventIdentification"]["EventOutcomeIndicator"])
        return format_rfc5424(
            to_xml(message) if fmt == "xml" else to_json_line(message),
            facility=self.config.syslog.facility,
            severity=SYSLOG_SEVERITY.get(outcome, 5),
            app_name=self.config.syslog.app_name,
            msgid=SYSLOG_MSGID[fmt],
            hostname=self.app.hostname,
            procid=self.app.process_id,
        )

    def _emit(self, build: Callable[[], AuditMessage]) -> None:
        if not self.config.enabled:
            return
        try:
            message = build()
        except Exception as exc:  # a bug here must never cost the caller its association
            self._warn.warn("build", "cannot build an audit message (%s)", type(exc).__name__)
            return
        self.record(message)

    def reload_tls(self) -> None:
        """SIGHUP: the syslog connection presents its client certificate as renewed."""
        if self._syslog is not None:
            self._syslog.reload_tls()

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop: send what syslog has queued for up to `timeout` seconds, close the file."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._syslog is not None:
                self._syslog.close(timeout)
            if self._file is not None:
                self._file.close()
        except Exception as exc:
            self._warn.warn("close", "closing the audit trail failed (%s)", exc)

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- per-study tally


class TransferTally:
    """One association's C-STOREs counted per study, outcome and SOP class.

    A.5.3.7 reports transfers per study, and a study with refusals gets one message for what
    succeeded and one for what failed (A.5.2, EventOutcomeIndicator). Call `add` per C-STORE,
    `flush` when the association ends and whenever `due`: A.5.3.7 allows several messages
    per study, and a long association's counts must not wait for its end (a killed acceptor
    would lose them).
    """

    def __init__(self, interval: float = TALLY_FLUSH_SECONDS) -> None:
        self._counts: dict[tuple[str, bool], Counter[str]] = {}
        self._patients: dict[str, str] = {}
        self._lock = threading.Lock()
        self._interval = interval
        self._since: float | None = None  # monotonic time of the oldest unflushed add

    def due(self, now: float) -> bool:
        """Have counts waited `interval` seconds (monotonic `now`) since their first add?"""
        with self._lock:
            return self._since is not None and now - self._since >= self._interval

    def add(
        self, study_uid: str, sop_class_uid: str, ok: bool, patient_id: str | None = None
    ) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
            self._counts.setdefault((study_uid, ok), Counter())[sop_class_uid] += 1
            if patient_id:
                self._patients.setdefault(study_uid, patient_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)

    def flush(self, trail: AuditTrail, calling_ae: str, called_ae: str, peer_address: str) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            patients, self._patients = self._patients, {}
            self._since = None
        for (study_uid, ok), by_class in counts.items():
            trail.instances_transferred(
                calling_ae, called_ae, peer_address, study_uid, dict(by_class), ok,
                patient_id=patients.get(study_uid))
