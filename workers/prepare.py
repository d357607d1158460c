"""What a delivery sends: the spooled file as is, or a copy morphed, de-identified and/or
transcoded for this destination.

Most deliveries need none of it and send the spooled file itself, byte for byte. Otherwise
the steps run in this order, each on a copy in the spool's relay folder (never on the
spooled instance, which other destinations and a retry still need):

1. morphing: the `morph` actions of every matched rule that routed the instance to the
   destination when it was received (their current settings), in rule order, then the
   destination's;
2. de-identification: a matched rule's `deidentify`, else the destination's;
3. transcoding: when the destination lists its `transfer_syntaxes` and the instance's is not
   among them, or when it refused the instance's syntax at negotiation (`no_context`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from router.core import metrics
from router.core.config import RouterConfig
from router.core.deid_spec import DeidentifyConfig
from router.core.errors import DeliveryError, RouterError
from router.core.log_safety import RepeatLimiter
from router.core.messages import JobHeader
from router.core.owned_names import relay_copy_name
from router.core.spool import Spool
from workers.prepare_failures import (
    deidentify_failure,
    deidentify_lost,
    morph_failure,
    morph_owner,
    rule_gone,
    spool_read_failure,
    spool_write_failure,
    unreadable_source,
)
from workers.prepare_steps import (
    Steps,
    refuse_leaking_copies,
    repr_fingerprint,
    rewrites_fingerprint,
    steps_for,
)
from workers.transforms.codec_process import CodecProcess

log = logging.getLogger(__name__)

# The worker's codec process, shared by its delivery threads (started on first transcode).
SHARED_CODECS = CodecProcess()

# Syntaxes tried, in order, for a destination that refused the instance's own and lists none.
FALLBACK_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # Explicit, Implicit VR LE
_MORPH_WARNINGS = RepeatLimiter(what="morph_warning")  # the same warning 3 times a minute
_BURNED_IN_WARNINGS = RepeatLimiter(what="burned_in_warning")


@dataclass
class Prepared:
    """The file to send and the job as the destination will see it."""

    job: JobHeader
    path: Path
    copies: list[Path] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        for path in self.copies:
            path.unlink(missing_ok=True)


class Preparer:
    """One per delivery thread; `uid_map` opens the de-identification UID map on first use."""

    def __init__(self, config: RouterConfig, spool: Spool,
                 uid_map: Callable[[], object], codecs: CodecProcess | None = None) -> None:
        self.config = config
        self.codecs = codecs if codecs is not None else SHARED_CODECS
        self.rules = {rule.name: rule for rule in config.rules}  # once, not per delivery
        self.spool = spool
        self._uid_map = uid_map
        self._uids: object | None = None

    def fingerprint(self, job: JobHeader, destination: str) -> str:
        """What this destination's rewrites of `job` are (empty: none), so that a digest of
        the received file plus this names the bytes it gets (on_duplicate: skip)."""
        return rewrites_fingerprint(steps_for(self.config, job, destination, self.rules))

    def repr_fingerprint(self, job: JobHeader, destination: str) -> str:
        """The fingerprint's form before this one (empty: none), for the ledger's rows of
        deliveries made before the upgrade (workers/delivery.py)."""
        return repr_fingerprint(steps_for(self.config, job, destination, self.rules))

    def deidentifies(self, job: JobHeader, destination: str) -> bool:
        """Does `destination` get `job` de-identified (for the audit trail's record)?"""
        return steps_for(self.config, job, destination, self.rules).deidentify is not None

    def prepare(self, job: JobHeader, destination: str, source: Path,
                force_syntaxes: Sequence[str] = ()) -> Prepared:
        """Raises DeliveryError (permanent) when a step cannot be done for this instance."""
        steps = steps_for(self.config, job, destination, self.rules)
        if steps.deidentify_lost:  # the more precise reason when both hold
            raise deidentify_lost(job, destination)
        if steps.rules_lost:
            raise rule_gone(job, destination, steps.rules_lost)
        refuse_leaking_copies(steps, destination)
        prepared = Prepared(job, source)
        try:
            if steps.morph:
                self._morph(prepared, steps, destination)
            if steps.deidentify is not None:
                self._deidentify(prepared, steps.deidentify, destination)
            accepted = tuple(force_syntaxes) or steps.transfer_syntaxes
            if accepted and prepared.job.transfer_syntax_uid not in accepted:
                self._transcode(prepared, accepted, destination)
        except BaseException as exc:
            cleanup_quietly(prepared)  # on a read-only spool the unlink fails too
            if isinstance(exc, FileNotFoundError) and not source.exists():
                raise  # withdrawn meanwhile (workers/delivery.py)
            if isinstance(exc, OSError):
                unreadable = unreadable_source(source)
                if unreadable is not None:  # this instance's file, not the spool's room
                    raise spool_read_failure(unreadable, source) from exc
                raise spool_write_failure(exc, self.spool.relay) from exc
            raise
        return prepared

    def _copy_path(self, prepared: Prepared) -> Path:
        path = self.spool.relay / relay_copy_name(prepared.job.job_id)
        prepared.copies.append(path)
        return path

    def _morph(self, prepared: Prepared, steps: Steps, destination: str) -> None:
        from workers.transforms.morph import MorphError, MorphTooSlow, morph_file

        target = self._copy_path(prepared)
        try:
            changes = morph_file(prepared.path, target, steps.morph)
        except (MorphError, ValueError) as exc:
            if isinstance(exc, MorphTooSlow):
                by = morph_owner(steps.morph_by, exc.index)
                metrics.MORPH_PATTERN_TIMEOUTS.labels(
                    destination, by.removeprefix("rule ") if by.startswith("rule ") else "").inc()
            raise morph_failure(exc, steps.morph_by) from exc
        prepared.changes += changes
        for change in changes:
            # Written anyway (a PACS may take it; route-test shows it too), but said: a value
            # too long or malformed for its VR is the config's, and the log is where it shows
            # (the attribute and the problem: the value is the patient's).
            warning = getattr(change, "warning", "")
            if warning and _MORPH_WARNINGS.allow(warning, 3):
                log.warning("job %s: morph wrote a value that is not valid for its VR: %s",
                            prepared.job.job_id, warning)
        self._advance(prepared, target)

    def _deidentify(self, prepared: Prepared, deid: DeidentifyConfig, destination: str) -> None:
        from workers.transforms.burned_in_pixels import BurnedInNote
        from workers.transforms.deidentify import deidentify_file

        target = self._copy_path(prepared)
        notes: list[BurnedInNote] = []
        try:
            if self._uids is None:
                self._uids = self._uid_map()
            prepared.changes += deidentify_file(prepared.path, target, deid,
                                                self._uids, notes)  # type: ignore[arg-type]
        except ValueError as exc:  # this instance cannot be de-identified
            raise deidentify_failure(exc) from exc
        except RouterError as exc:  # the UID map's key or table: fixable, so retried
            raise DeliveryError("deidentify", f"de-identification unavailable: {exc}",
                                transient=True) from exc
        except sqlite3.OperationalError as exc:  # the map's disk full, read-only, failing
            raise DeliveryError("spool_write", f"cannot record in the de-identification UID "
                                f"map: {exc}", transient=True) from exc
        for note in notes:  # counted (and logged a few times a minute) when it is sent
            metrics.DEID_BURNED_IN.labels(destination, note.kind).inc()
            if _BURNED_IN_WARNINGS.allow(f"{destination} {note.kind}", 3):
                log.warning("job %s to %s: de-identified, but %s", prepared.job.job_id,
                            destination, note.text)
        self._advance(prepared, target)

    def _transcode(self, prepared: Prepared, accepted: Sequence[str], destination: str) -> None:
        # pydicom only with the first transcode: a worker that never transcodes never loads it
        from workers.transforms.decoded_size import (
            by_frame_refusal,
            estimate_decoded,
            over_budget,
        )

        source_ts = prepared.job.transfer_syntax_uid
        size = estimate_decoded(prepared.path)
        budget = self.config.transcode_max_decoded_bytes
        too_big = over_budget(None if size is None else size.total, budget, source_ts)
        if not too_big:
            self._run_codecs(prepared, accepted, destination)
        elif not self._resplice(prepared, accepted, destination):
            assert size is not None  # over_budget said so
            refusal = by_frame_refusal(size, budget)
            if refusal:  # it would not fit the next time either: not retried
                raise DeliveryError("transcode", f"{too_big}; {refusal}", transient=False)
            self._run_codecs(prepared, accepted, destination, too_big)

    def _run_codecs(self, prepared: Prepared, accepted: Sequence[str], destination: str,
                    too_big: str = "") -> None:
        """Transcode in the codec process: whole, or (`too_big`, why not whole) one frame
        at a time."""
        source_ts = prepared.job.transfer_syntax_uid
        target = self._copy_path(prepared)
        done = self.codecs.transcode(prepared.path, target, source_ts, accepted,
                                     by_frame=bool(too_big))
        for name, _ in done.failed:
            metrics.TRANSCODE_FALLBACKS.labels("crash" if name in done.crashed
                                               else "error").inc()
        if done.target_ts is None:
            raise DeliveryError(
                "transcode", f"{destination} accepts none of {', '.join(accepted)} and "
                f"{done.source_name} cannot be converted to one of them", transient=False)
        if done.error:
            raise DeliveryError("transcode", f"{too_big}; {done.error}" if too_big
                                else done.error, transient=False)
        change = f"transcoded {done.source_name} -> {done.target_name}"
        metrics.TRANSCODES.labels(destination, "by_frame" if too_big else "whole").inc()
        if too_big:  # rare, and the README says where such an instance went: logged
            change += " frame by frame (too large to decode whole)"
            log.info("job %s: %s for %s", prepared.job.job_id, change, destination)
        if done.failed:  # an earlier syntax in the destination's list failed on this image
            change += f" ({', '.join(name for name, _ in done.failed)} failed on this image)"
            log.info("job %s: %s; %s", prepared.job.job_id, change,
                     "; ".join(f"{name}: {why}" for name, why in done.failed))
        prepared.changes.append(change)
        self._advance(prepared, target)

    def _resplice(self, prepared: Prepared, accepted: Sequence[str], destination: str) -> bool:
        """Too big to decode: Explicit <-> Implicit VR Little Endian needs no decoding
        (native_resplice.py). False if it does not apply."""
        from pydicom.uid import UID

        from workers.transforms.native_resplice import resplice, resplice_target

        source_ts = prepared.job.transfer_syntax_uid
        target_ts = resplice_target(source_ts, accepted)
        if target_ts is None or not resplice(prepared.path, self._copy_path(prepared),
                                             target_ts):
            return False
        change = (f"converted {UID(source_ts).name} -> {UID(target_ts).name} without "
                  f"decoding its pixel data (too large to decode)")
        metrics.TRANSCODES.labels(destination, "without_decoding").inc()
        log.info("job %s: %s for %s", prepared.job.job_id, change, destination)
        prepared.changes.append(change)
        self._advance(prepared, prepared.copies[-1])
        return True

    @staticmethod
    def _advance(prepared: Prepared, target: Path) -> None:
        """The copy is what the next step reads and the destination gets."""
        from pydicom.filereader import read_file_meta_info

        meta = read_file_meta_info(target)
        prepared.job = dataclasses.replace(
            prepared.job, transfer_syntax_uid=str(meta.TransferSyntaxUID),
            sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
            size=target.stat().st_size)
        prepared.path = target


def cleanup_quietly(prepared: Prepared | None) -> None:
    if prepared is not None:
        with contextlib.suppress(OSError):
            prepared.cleanup()


def open_uid_map(spool: Spool, key_file: Path | None = None) -> object:
    """The de-identification UID map shared by every worker: its table on the spool volume,
    its key there too unless `key_file` (spool.deidentify_key_file, shared by every cell),
    so that a UID maps the same way across workers, restarts and cells."""
    from workers.transforms.uid_map import UidMap

    if key_file is not None:
        return UidMap(key_file, spool.root / "deid-uids.sqlite", shared=True)
    return UidMap(spool.root / "deid-secret.key", spool.root / "deid-uids.sqlite")
