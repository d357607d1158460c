"""Every Prometheus metric of the router, defined once. Labels are bounded sets, never UIDs.

Import this module only after PROMETHEUS_MULTIPROC_DIR is set (router.cli does it): the client
picks its multiprocess value store at import time, and spawned children inherit the variable.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram, values

from router.core import dead_metrics

PREFIX = "dicom_router"


def _own_pid_store() -> None:
    """The multiprocess value store asks `os.getpid()` on every inc, set and read, to notice a
    fork: a system call each time, 12 per 10 KB instance summed over the router's processes
    (strace). This process's pid is kept instead, and a fork (the router spawns; a library
    might fork) updates it in the child, so the store still sees every change of pid."""
    pid = [os.getpid()]
    os.register_at_fork(after_in_child=lambda: pid.__setitem__(0, os.getpid()))
    values.ValueClass = values.MultiProcessValue(lambda: pid[0])  # type: ignore[no-untyped-call]


if values.ValueClass is not values.MutexValue:  # multiprocess: PROMETHEUS_MULTIPROC_DIR set
    _own_pid_store()

Metric = TypeVar("Metric", Counter, Gauge, Histogram)
_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}


def labelled(metric: Metric, *values: str) -> Metric:
    """`metric.labels(*values)`, looked up once per process: labels() takes a lock and
    converts every value on each call, which py-spy counted at 3% of a worker's Python time
    on the per-instance path. Only for metrics whose children are never removed."""
    key = (metric, values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child

ASSOCIATIONS = Counter(
    f"{PREFIX}_associations_total", "Associations requested, by calling AE and result.",
    ["calling_ae", "result"],
)
ACTIVE_ASSOCIATIONS = Gauge(
    f"{PREFIX}_associations_active", "Associations open now, by calling AE.", ["calling_ae"],
    multiprocess_mode="livesum",
)
DIMSE_REQUESTS = Counter(
    f"{PREFIX}_dimse_requests_total", "DIMSE requests answered, by command and status.",
    ["command", "status"],
)
COMMITMENT_HOLDS = Counter(
    f"{PREFIX}_commitment_holds_total",
    "Storage commitment N-ACTIONs the broker held while their instances were pending for the "
    "upstream, by how the hold ended: delivered (none pending any more), bound "
    "(commitment_hold passed), cancelled (the requester or its acceptor went away).",
    ["outcome"],
)
RECEIVED_BYTES = Counter(
    f"{PREFIX}_received_bytes_total", "Dataset bytes received, counted as they arrive."
)
RECEIVING_BYTES = Gauge(
    f"{PREFIX}_receive_bytes_in_flight",
    "Bytes of datasets being received now (not yet complete): progress of long transfers.",
    multiprocess_mode="livesum",
)
DIMSE_RESPONSES = Counter(
    f"{PREFIX}_dimse_responses_total",
    "DIMSE responses received from destinations, by command and status.",
    ["destination", "command", "status"],
)
INSTANCES_DROPPED = Counter(
    f"{PREFIX}_instances_dropped_total",
    "C-STOREs answered Success and not kept, by the rule (action: drop) that said so.",
    ["rule"],
)
INSTANCES_RECEIVED = Counter(
    f"{PREFIX}_instances_received_total", "C-STORE instances by outcome.", ["result"]
)
FORWARDED = Counter(
    f"{PREFIX}_instances_forwarded_total", "Deliveries by destination and result.",
    ["destination", "result"],
)
FORWARDED_BYTES = Counter(
    f"{PREFIX}_forwarded_bytes_total", "Bytes delivered, by destination.", ["destination"]
)
FORWARD_SECONDS = Histogram(
    f"{PREFIX}_forward_seconds", "Time of one delivery attempt, by destination.",
    ["destination"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge(
    f"{PREFIX}_queue_depth", "Deliveries waiting, by destination (retries included).",
    ["destination"], multiprocess_mode="livesum",
)
IN_FLIGHT = Gauge(
    f"{PREFIX}_deliveries_in_flight", "Deliveries handed to workers, by destination.",
    ["destination"], multiprocess_mode="livesum",
)
# Gauges a child writes (the broker: restarted after a crash) use a live* mode: the supervisor
# deletes those files of a dead process (mark_process_dead), not those of "max", which would
# report the dead broker's value beside its successor's for ever. "max" is left to gauges
# only the supervisor writes: its pid never changes.
DESTINATION_PAUSED = Gauge(
    f"{PREFIX}_destination_paused",
    "1 while an operator has paused a destination (its queue holds), else 0.",
    ["destination"], multiprocess_mode="livemax",
)
DESTINATION_UP = Gauge(
    f"{PREFIX}_destination_up",
    "0 from a failure that paused a destination (connect, associate, abort) until it takes "
    "or answers about an instance again, else 1.",
    ["destination"], multiprocess_mode="livemax",
)
QUEUE_OLDEST = Gauge(
    f"{PREFIX}_queue_oldest_seconds",
    "Age of the oldest delivery not yet done, by destination (0 when none).",
    ["destination"], multiprocess_mode="livemax",
)
SPOOL_FREE = Gauge(
    f"{PREFIX}_spool_free_bytes", "Free bytes on the spool's filesystem.",
    multiprocess_mode="livemax",
)
SPOOL_SIZE = Gauge(
    f"{PREFIX}_spool_size_bytes", "Size of the spool's filesystem.",
    multiprocess_mode="livemax",
)
SPOOL_FREE_INODES = Gauge(
    f"{PREFIX}_spool_free_inodes",
    "Free inodes on the spool's filesystem (f_favail; 0 with _spool_inodes 0: no limit).",
    multiprocess_mode="livemax",
)
SPOOL_INODES = Gauge(
    f"{PREFIX}_spool_inodes", "Inodes of the spool's filesystem (0: it has no limit).",
    multiprocess_mode="livemax",
)
SPOOL_QUEUED = Gauge(
    f"{PREFIX}_spool_queued_bytes", "Bytes of instances on the spool not yet settled.",
    multiprocess_mode="livesum",
)
READY = Gauge(
    f"{PREFIX}_ready", "1 while the router accepts work (as /readyz), else 0.",
    multiprocess_mode="max",
)
BROKER_REPORT_AGE = Gauge(
    f"{PREFIX}_broker_report_age_seconds",
    "Seconds since the broker last wrote its live status (about 1 s when it works; past 10 s "
    "/readyz turns 503: hung).",
    multiprocess_mode="max",
)
CONFIG_RELOADS = Counter(
    f"{PREFIX}_config_reloads_total", "Config reloads on SIGHUP, by result.", ["result"]
)
CONFIG_RELOADED_AT = Gauge(
    f"{PREFIX}_config_last_reload_success_timestamp_seconds",
    "When the config in force was loaded (start or last successful reload).",
    multiprocess_mode="max",
)
JOBS_QUEUED = Gauge(
    f"{PREFIX}_jobs_queued", "Jobs on the spool not yet settled.", multiprocess_mode="livesum"
)
RETRIES = Counter(
    f"{PREFIX}_retries_total", "Delivery attempts scheduled again, by reason.",
    ["destination", "reason"],
)
DEAD_LETTERS = Counter(
    f"{PREFIX}_dead_letters_total", "Deliveries given up and kept as dead letters.",
    ["destination", "reason"],
)
COMMITMENT_RESULTS_KEPT = Gauge(
    f"{PREFIX}_commitment_results_kept",
    "Storage commitment results on the spool that their requester has not taken yet (sent "
    "again until it does).",
    multiprocess_mode="max",
)
DEAD_LETTERS_WAITING = Gauge(
    f"{PREFIX}_dead_letters_waiting",
    "Dead letters on the spool, waiting to be replayed or purged, by destination.",
    ["destination"], multiprocess_mode="livesum",
)
DEAD_LETTERS_UNWRITTEN = Gauge(
    f"{PREFIX}_dead_letters_unwritten",
    "Dead letters the spool could not take yet (disk full): their jobs stay on the spool and "
    "the broker writes them again every second.",
    ["destination"], multiprocess_mode="livesum",
)
PATTERN_TIMEOUTS = Counter(
    f"{PREFIX}_rule_pattern_timeouts_total",
    "C-STOREs refused (0xC006) because a rule's regex ran past its deadline on the value.",
    ["rule"],
)
MORPH_PATTERN_TIMEOUTS = Counter(
    f"{PREFIX}_morph_pattern_timeouts_total",
    "Deliveries made `morph` dead letters because a morph's replace pattern ran past its "
    "deadline on the instance's value, by destination and the rule whose morph it is ('' "
    "for the destination's own morph).",
    ["destination", "rule"],
)
REFUSALS = Counter(
    f"{PREFIX}_refusals_total", "Work refused by the router, by reason.", ["reason"]
)
DUPLICATES_SUPPRESSED = Counter(
    f"{PREFIX}_duplicates_suppressed_total",
    "Deliveries not sent: a redelivery of a job the destination already has (policy "
    "redelivery), or bytes it already got from an earlier reception (policy skip).",
    ["destination", "policy"],
)
DESTINATION_CONCURRENCY = Gauge(
    f"{PREFIX}_destination_concurrency",
    "Associations the router opens to a destination at once: learned (a busy destination "
    "lowers it, deliveries with a backlog raise it up to max_parallel) or max_associations.",
    ["destination"], multiprocess_mode="livesum",
)
LEASES_EXPIRED = Counter(
    f"{PREFIX}_leases_expired_total",
    "Deliveries taken back from a worker that died, went silent or stopped before answering.",
)
TLS_FAILURES = Counter(
    f"{PREFIX}_tls_handshake_failures_total", "TLS handshakes that failed, by reason.", ["reason"]
)
# The soonest of the live acceptors: one that kept an older certificate (a refused renewal)
# shows its date.
TLS_CERTIFICATE_EXPIRY = Gauge(
    f"{PREFIX}_tls_certificate_expiry_timestamp_seconds",
    "When the certificate the TLS listener serves expires (Unix time).",
    ["listener"],  # dicom (listen.tls.cert) or console (console.tls_cert)
    multiprocess_mode="livemin",
)
CONNECTIONS_DROPPED = Counter(
    f"{PREFIX}_connections_dropped_total",
    "Inbound connections the acceptor closed or aborted for breaking its bounds, by reason.",
    ["reason"],
)
ASSOCIATION_REJECTIONS = Counter(
    f"{PREFIX}_association_rejections_total",
    "Associations rejected by the router's access rules or limits, by reason.", ["reason"],
)
LOG_SUPPRESSED = Counter(
    f"{PREFIX}_log_suppressed_total",
    "Log lines and audit records not written because the same thing repeated too often "
    "(by what: log, audit_tls_failure, audit_rejection).", ["what"],
)
AUDIT_FAILURES = Counter(
    f"{PREFIX}_audit_failures_total",
    "Audit messages lost, by sink: file (not appended to audit.path: the trail is "
    "incomplete), syslog (dropped before the server took them; the file has them).",
    ["sink"],
)
RESTARTS = Counter(
    f"{PREFIX}_process_restarts_total", "Router processes restarted after dying.", ["process"]
)
SPOOL_FILES_REUSED = Counter(
    f"{PREFIX}_spool_files_reused_total",
    "C-STOREs written over a settled job's file from the spool's recycle/ instead of a new "
    "file (saves the filesystem an inode allocation and a free per instance).",
)
DEID_BURNED_IN = Counter(
    f"{PREFIX}_deid_burned_in_total",
    "De-identified instances sent whose pixels may carry burned-in text the profile cannot "
    "remove: annotated (BurnedInAnnotation YES, sent as burned_in_annotation: send says), "
    "recognizable (RecognizableVisualFeatures YES, the same), "
    "or a class that often carries it without the attribute (ultrasound, "
    "secondary_capture, document, photo_video).",
    ["destination", "kind"],
)
TRANSCODE_FALLBACKS = Counter(
    f"{PREFIX}_transcode_fallbacks_total",
    "Syntaxes a destination accepts that an instance could not be written in, before a "
    "later one was: error (the codec refused or failed on the image), crash (the codec "
    "process died on it).",
    ["cause"],
)
TRANSCODES = Counter(
    f"{PREFIX}_transcodes_total",
    "Copies written in another transfer syntax for a destination: whole (decoded whole), "
    "by_frame (too large to decode whole: one frame at a time), without_decoding (too large: "
    "Explicit <-> Implicit VR Little Endian, the pixel data copied).",
    ["destination", "how"],
)
SPOOL_ERRORS = Counter(
    f"{PREFIX}_spool_errors_total",
    "Spool operations on jobs/ that failed (EACCES, EIO, ENOSPC, a directory where a file "
    "should be): remove (a settled job stays, recovered at the next start), recover (a job "
    "left in place at start), mark_delivered (a crash may then redeliver, which the ledger "
    "suppresses), dead_letter (a record not written: the broker tries again every second). "
    "Each is logged with the job.",
    ["operation"],
)
RECOVERED_JOBS = Counter(f"{PREFIX}_recovered_jobs_total", "Jobs recovered from the spool.")
DEAD_PROCESS_FILES_CLEARED = Counter(
    f"{PREFIX}_dead_process_files_cleared_total",
    "Files deleted while the router ran because the process writing them had stopped: in "
    "the spool's incoming/ an acceptor's (never acknowledged to their senders), in relay/ "
    "a worker's copies of jobs (the jobs themselves stay queued) or the instances of a "
    "C-GET or C-MOVE an acceptor was relaying.",
    ["folder"],
)
SPOOL_GROUP_SYNCS = Counter(
    f"{PREFIX}_spool_group_syncs_total",
    "Shared syncs of the acceptor's group commit (journal segment and jobs folder), each "
    "covering every commit waiting at that moment.",
)
# Info metrics do not work in multiprocess mode: the usual gauge set to 1 stands in.
BUILD_INFO = Gauge(f"{PREFIX}_build_info", "Router version (always 1).", ["version"],
                   multiprocess_mode="max")


def mark_dead(pid: int | None, folder: str | None = None) -> None:
    """A child process is gone: its live* values leave /metrics (prometheus_client), and its
    "max" gauge file goes too. Only the supervisor writes "max" gauges (above); a child's file
    holds them at 0 from its import, one more file per restart of a child. Its counters and
    histograms are folded into the accumulated files (dead_metrics): totals stay, files go."""
    from prometheus_client import multiprocess

    if pid is None:
        return  # never started
    folder = folder or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
    if folder:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, f"gauge_max_{pid}.db"))
        dead_metrics.fold(pid, folder)


class BoundedLabel:
    """Keeps a label drawn from peer input (a calling AE title) to a bounded set of values.

    The first `limit` distinct values keep their name, later ones are counted as "other":
    a scanner that cycles AE titles cannot grow the metric set without bound.
    """

    OTHER = "other"
    INVALID = "invalid"

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | bytes | None) -> str:
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        text = (value or "").strip() or "unknown"
        if "\\" in text or any(ord(c) < 0x20 or ord(c) >= 0x7F for c in text):
            return self.INVALID  # no AE title (PS3.5): control bytes stay out of /metrics
        with self._lock:
            if text in self._known:
                return text
            if len(self._known) < self.limit:
                self._known.add(text)
                return text
        return self.OTHER


CALLING_AE = BoundedLabel()
