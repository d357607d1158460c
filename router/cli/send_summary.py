"""The summary of a `dicom-router send`: counts by outcome, and the exit code."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from router.cli.send_client import SendResult
from router.cli.send_files import Scan
from router.core.dimse_status import is_success


@dataclass(frozen=True)
class Summary:
    files: int  # DICOM files found
    requested: int  # C-STORE requests sent
    succeeded: int
    warnings: dict[str, int]
    failed: dict[str, int]  # refused: by status in hex, or by problem (no context)
    unknown: dict[str, int]  # sent without an answer, by problem: the peer may have kept them
    unknown_files: list[Path]
    comments: dict[str, str]  # an example ErrorComment per failure label
    not_sent: int
    skipped: int
    bytes_sent: int
    elapsed: float


# --- results -----------------------------------------------------------------------------------

def summarize(found: Scan, result: SendResult, elapsed: float) -> Summary:
    warnings: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    comments: dict[str, str] = {}
    for outcome in result.outcomes:
        if outcome.stored and outcome.status is not None and not is_success(outcome.status):
            warnings[outcome.label] += 1
        elif outcome.unknown:
            unknown[outcome.label] += 1
        elif not outcome.stored:
            failed[outcome.label] += 1
            if outcome.comment:
                comments.setdefault(outcome.label, outcome.comment)
    requested = [o for o in result.outcomes if o.requested]
    return Summary(
        files=len(found.instances), requested=len(requested),
        succeeded=sum(1 for o in result.outcomes if o.status is not None
                      and is_success(o.status)),
        warnings=dict(sorted(warnings.items())), failed=dict(sorted(failed.items())),
        unknown=dict(sorted(unknown.items())),
        unknown_files=[o.instance.path for o in result.outcomes if o.unknown],
        comments=comments, not_sent=len(found.instances) - len(result.outcomes),
        skipped=len(found.skipped), bytes_sent=sum(o.instance.size for o in requested),
        elapsed=elapsed,
    )


def exit_code(summary: Summary, result: SendResult) -> int:
    """2: no association (a usage problem); 1: a file not stored; 0: all stored."""
    if result.association_errors:
        return 2
    if summary.failed or summary.unknown or summary.not_sent or result.errors:
        return 1
    return 0
