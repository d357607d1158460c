"""What the router would do with a file: which rules match, and per destination what would be
sent (morphed, de-identified, transcoded, where a folder would store it), without sending it.

`dicom-router route-test` and the console's rule tester both call `explain`. It runs the
workers' own preparation (workers/prepare.py, transforms, the folder placement), so that
its prediction is the delivery's: the one module outside router/cli that may import
workers/ (pyproject: the import-linter contract's ignore_imports).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.core.config import FolderDestination as FolderConfig
from router.core.config import RouterConfig
from router.core.errors import DeliveryError, DimseRefusal

if TYPE_CHECKING:
    from router.core.rules import RouteDecision
    from workers.prepare_steps import Steps


def explain(config: RouterConfig, path: Path, calling_ae: str, called_ae: str,
            source: str) -> list[str]:
    from pydicom import dcmread

    from router.acceptor.store_decision import COMPLETION_KEYWORDS, completion_groups
    from router.core.header_tags import read_tags
    from router.core.rules import AssociationFacts, RuleSet

    ds = dcmread(path, stop_before_pixels=True)
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID", "")))
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    rules = RuleSet(config.rules)
    facts = AssociationFacts(calling_ae, called_ae, source)
    lines = [f"{path}",
             f"  as {calling_ae} -> {called_ae} from {source}; SOP class {sop_class}, "
             f"syntax {syntax}"]
    # What the acceptor reads, in one read: the rules' tags, and a completion rule's.
    keywords = {*rules.tag_keywords, *(COMPLETION_KEYWORDS if rules.completes else ())}
    tags: dict[str, str] = {}

    def header() -> dict[str, str]:
        # The acceptor's own reader: multi-values joined with '\\', as live routing sees them.
        if not tags:
            tags.update(read_tags(path, sorted(keywords)))
        return tags

    try:
        decision = rules.route(facts, header, sop_class)
        completion_groups(decision.completes, header)  # reads what the acceptor reads
    except ValueError as exc:  # as the acceptor answers a header it cannot read
        return [*lines, f"  REFUSED: the sender would get 0xC000 (dataset cannot be "
                        f"parsed: {exc})"]
    except DimseRefusal as exc:  # as the acceptor answers it (a pattern past its deadline)
        return [*lines, f"  REFUSED: the sender would get 0x{exc.status:04X} ({exc})"]
    lines.append(f"  rules matched: {', '.join(decision.rules) or 'none'}")
    if decision.action != "forward":
        what = "answered Success, nothing kept" if decision.action == "drop" else \
            "answered 0xC004 (refused by rule)"
        lines.append(f"  {decision.action.upper()} by rule {decision.rules[-1]}: {what}")
        if decision.discarded:
            lines.append(f"  not sent to {', '.join(decision.discarded)}: earlier rules "
                         f"(continue: true) chose them, the {decision.action} discards them")
        return lines
    if not decision.matched:
        lines.append("  NO ROUTE: the sender would get 0xC002")
        return lines
    lines.append(f"  priority: {_priority_text(decision.priorities)}")
    for destination in decision.destinations:
        lines += _destination_lines(config, decision, destination, path, syntax)
    return lines


def _destination_lines(config: RouterConfig, decision: RouteDecision, destination: str,
                       path: Path, syntax: str) -> list[str]:
    from pydicom import dcmread

    from router.core.messages import JobHeader
    from workers.prepare_steps import steps_for

    job = JobHeader("route-test", "", "", "", 0, "", "", syntax, 0, 0.0, decision.rules,
                    (destination,), routes=decision.routes)
    steps = steps_for(config, job, destination)
    dest = config.destinations[destination]
    lines = [f"  -> {destination} ({dest.type})"]
    if len(steps.rules) > 1:  # every matched rule that names it: each one's transforms apply
        lines.append(f"     sent here by rules {', '.join(steps.rules)}: the transforms of "
                     f"each apply, in this order")
    elif steps.rules:
        lines.append(f"     sent here by rule {steps.rules[0]}")
    if len(set(decision.priorities)) > 1:  # the queue takes the most urgent, the C-STORE not
        by_rule = dict(zip(decision.rules, decision.priorities, strict=False))
        mine = tuple(by_rule.get(rule, "request") for rule in steps.rules)
        lines.append(f"     sent with priority {_priority_text(mine)}")
    lines += _hold_lines(decision, destination)
    if not steps.rewrites and not steps.transfer_syntaxes:
        lines.append("     sent byte-exact, as received")
    ds = dcmread(path, stop_before_pixels=True)
    try:
        lines += _rewrite_lines(ds, steps, destination)
    except DeliveryError as exc:  # the delivery stops there: nothing else would happen
        return [*lines, f"     DEAD LETTER ({exc.reason}): {exc}"]
    if steps.transfer_syntaxes:
        if syntax in steps.transfer_syntaxes:
            lines.append("     transfer syntax accepted as is")
        else:
            lines += _transcode_lines(syntax, steps.transfer_syntaxes)
    if isinstance(dest, FolderConfig):
        lines += _folder_lines(dest, ds, steps.deidentify is not None)
    if dest.window is not None:
        lines.append(f"     only sent between {dest.window.start} and {dest.window.end}")
    return lines


def _priority_text(priorities: tuple[str, ...]) -> str:
    """The most urgent of the matched rules' priorities, as the acceptor takes it."""
    from router.core.priority import HIGH, PRIORITIES

    fixed = sorted((p for p in priorities if p != "request"), key=PRIORITIES.__getitem__)
    if not fixed:
        return "the request's"
    text = f"{fixed[0]}{' (jumps the queue)' if PRIORITIES[fixed[0]] == 0 else ''}"
    if "request" in priorities and PRIORITIES[fixed[0]] > HIGH:  # a request is high at most
        text += ", or the request's if more urgent"
    if len(set(priorities)) > 1:
        text += f" (the most urgent of the matched rules' {', '.join(priorities)})"
    return text


def _hold_lines(decision: RouteDecision, destination: str) -> list[str]:
    """The completion that holds what goes to `destination`: the first matched completion
    rule that forwards there (router/broker/completion.py), each destination its own."""
    rule = next((r for r in decision.completes if destination in r.forward), None)
    if rule is None or rule.complete is None:
        return ["     sent at once (no completion rule forwards here)"] \
            if decision.completes else []
    c = rule.complete
    return [f"     held until the {c.level} is stable for {c.stable_for:g}s (at most "
            f"{c.deadline:g}s, rule {rule.name}), then sent as one batch in instance order"]


def _transcode_lines(syntax: str, accepted: tuple[str, ...]) -> list[str]:
    """The worker's candidates (workers/transforms/codec_process.py), first one first. No
    pixel data is encoded here, so an encoder failure on this image cannot be predicted:
    the worker then sends the next candidate, which is what the "else" line says."""
    from workers.transforms.transcode import describe, target_candidates

    candidates = target_candidates(syntax, list(accepted))
    if not candidates:
        return [f"     DEAD LETTER: none of {', '.join(accepted)} can be made from "
                f"{describe(syntax)}"]
    lines = [f"     transcoded {describe(syntax)} -> {describe(candidates[0])}"]
    lines += [f"       else, if encoding fails, -> {describe(ts)}" for ts in candidates[1:]]
    return lines


def _rewrite_lines(ds: Any, steps: Steps, destination: str) -> list[str]:
    """Morph and de-identify `ds` as the worker would; its failures are the worker's
    dead letters (workers/prepare.py), raised as the same DeliveryError."""
    from workers.prepare_failures import deidentify_failure, morph_failure
    from workers.prepare_steps import refuse_leaking_copies
    from workers.transforms.morph import MorphError, apply_morph

    refuse_leaking_copies(steps, destination)
    lines: list[str] = []
    if steps.morph:
        try:
            changes = apply_morph(ds, steps.morph)
        except (MorphError, ValueError) as exc:
            raise morph_failure(exc, steps.morph_by) from exc
        lines += [f"     morph: {c}" for c in changes] or ["     morph: nothing to change"]
    if steps.deidentify is not None:
        try:
            lines += _deid_lines(ds, steps.deidentify, steps.deidentified_by)
        except ValueError as exc:
            raise deidentify_failure(exc) from exc
    return lines


def _folder_lines(dest: FolderConfig, ds: Any, deidentified: bool = False) -> list[str]:
    """Where the folder destination would store it: the delivery's own check (`placement`),
    on the header as morphed and de-identified above."""
    from workers.destinations.folder import UID_KEYWORDS, placement

    tags = {k: str(ds.get(k) or "") for k in UID_KEYWORDS}
    # The sender's C-STORE names the instance as its file meta does.
    sop = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", ""))
    try:
        where = placement(tags, sop)
    except DeliveryError as exc:
        return [f"     DEAD LETTER ({exc.reason}): {exc}"]
    if deidentified:  # the new UIDs come from the router's key, which route-test never reads
        return [f"     stored as {dest.path}/<new Study UID>/<new Series UID>/<new SOP "
                f"Instance UID>.dcm (UIDs replaced by de-identification)"]
    return [f"     stored as {dest.path / where.relative}",
            *(f"     {note}" for note in where.notes)]


def _deid_lines(ds: Any, deid: Any, by: str) -> list[str]:
    import tempfile

    from workers.transforms.burned_in_pixels import BurnedInNote
    from workers.transforms.deidentify import deidentify
    from workers.transforms.uid_map import UidMap

    notes: list[BurnedInNote] = []
    with tempfile.TemporaryDirectory() as tmp:  # a throwaway map: nothing is recorded
        uids = UidMap(Path(tmp) / "key", Path(tmp) / "uids.sqlite")
        changes = deidentify(ds, deid, uids, notes)
    shown = ", ".join(changes[:12]) + (f", ... ({len(changes)} in all)"
                                       if len(changes) > 12 else "")
    return [f"     de-identified (PS3.15 basic profile, as {by} says, after every morph): "
            f"{shown}", *(f"     warning: {note.text}" for note in notes)]
