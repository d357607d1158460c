"""`dicom-router route-test`: what the router would do with these files, without sending them.

For each file, as if it came from the given calling AE, called AE and source address: which
rules match, the decision (forward, drop, reject, no route), and per destination what would
be morphed, de-identified or transcoded, and the priority and completion group.

Exit codes: 0 every file explained; 1 a file is not DICOM or cannot be read (the others are
still explained); 2 bad arguments, a bad config, or no files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from router.cli.common import config_parent
from router.core.config import FolderDestination as FolderConfig
from router.core.config import RouterConfig, default_config, load_config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = sub.add_parser("route-test", help="show how files would be routed; sends nothing",
                          parents=[config_parent("router config (default: the built-in one)")])
    test.add_argument("files", nargs="+", type=Path, help="DICOM files or folders")
    test.add_argument("--calling-ae", default="STORESCU", help="the sender's AE title")
    test.add_argument("--called-ae", help="the AE title called (default: the router's)")
    test.add_argument("--source", default="127.0.0.1", help="the sender's IP address")
    test.set_defaults(func=cmd_route_test)


def cmd_route_test(args: argparse.Namespace) -> int:
    from pydicom.errors import InvalidDicomError

    # A bad config is a ConfigError: `dicom-router: error: ...`, exit 2 (router.cli.main).
    config = default_config() if args.config is None else load_config(args.config)
    files = [p for path in args.files for p in _expand(path)]
    if not files:
        print("route-test: no files found", file=sys.stderr)
        return 2
    unreadable = 0
    for path in files:
        try:
            print("\n".join(explain(config, path, args.calling_ae,
                                    args.called_ae or config.ae_title, args.source)))
        except InvalidDicomError:
            unreadable += 1
            print(f"{path}: not DICOM: no DICOM Part 10 header (the 'DICM' prefix); "
                  "a sender could not send it")
        except Exception as exc:  # one unreadable file must not hide the others
            unreadable += 1
            print(f"{path}: cannot be read as DICOM: {exc}")
        print()
    return 1 if unreadable else 0


def _expand(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def explain(config: RouterConfig, path: Path, calling_ae: str, called_ae: str,
            source: str) -> list[str]:
    from pydicom import dcmread

    from router.core.priority import PRIORITIES
    from router.core.rules import AssociationFacts, RuleSet

    ds = dcmread(path, stop_before_pixels=True)
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID", "")))
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    rules = RuleSet(config.rules)
    facts = AssociationFacts(calling_ae, called_ae, source)
    decision = rules.route(facts, lambda: _tags(ds, rules.tag_keywords), sop_class)
    lines = [f"{path}",
             f"  as {calling_ae} -> {called_ae} from {source}; SOP class {sop_class}, "
             f"syntax {syntax}",
             f"  rules matched: {', '.join(decision.rules) or 'none'}"]
    if decision.action != "forward":
        what = "answered Success, nothing kept" if decision.action == "drop" else \
            "answered 0xC004 (refused by rule)"
        lines.append(f"  {decision.action.upper()} by rule {decision.rules[-1]}: {what}")
        return lines
    if not decision.matched:
        lines.append("  NO ROUTE: the sender would get 0xC002")
        return lines
    priority = decision.priority if decision.priority != "request" else "the request's"
    lines.append(f"  priority: {priority}"
                 f"{' (jumps the queue)' if PRIORITIES.get(priority) == 0 else ''}")
    if decision.complete is not None and decision.complete.complete is not None:
        c = decision.complete.complete
        lines.append(f"  held until the {c.level} is stable for {c.stable_for:g}s "
                     f"(at most {c.deadline:g}s), then sent as one batch in instance order")
    for destination in decision.destinations:
        lines += _destination_lines(config, decision.rules, destination, path, syntax)
    return lines


def _tags(ds: Any, keywords: tuple[str, ...]) -> dict[str, str]:
    return {k: str(ds.get(k)) for k in keywords if ds.get(k) is not None}


def _destination_lines(config: RouterConfig, rule_names: tuple[str, ...], destination: str,
                       path: Path, syntax: str) -> list[str]:
    from pydicom import dcmread

    from router.core.messages import JobHeader
    from workers.prepare import steps_for

    job = JobHeader("route-test", "", "", "", 0, "", "", syntax, 0, 0.0, rule_names,
                    (destination,))
    steps = steps_for(config, job, destination)
    dest = config.destinations[destination]
    lines = [f"  -> {destination} ({dest.type})"]
    if not steps.rewrites and not steps.transfer_syntaxes:
        lines.append("     sent byte-exact, as received")
    ds = dcmread(path, stop_before_pixels=True)
    if steps.morph or steps.deidentify is not None:
        if steps.morph:
            from workers.transforms.morph import apply_morph

            changes = apply_morph(ds, steps.morph)
            lines += [f"     morph: {c}" for c in changes] or ["     morph: nothing to change"]
        if steps.deidentify is not None:
            lines += _deid_lines(ds, steps.deidentify)
    if steps.transfer_syntaxes:
        from workers.transforms.transcode import choose_target, describe

        if syntax in steps.transfer_syntaxes:
            lines.append("     transfer syntax accepted as is")
        else:
            target = choose_target(syntax, list(steps.transfer_syntaxes))
            lines.append(f"     transcoded {describe(syntax)} -> {describe(target)}" if target
                         else f"     DEAD LETTER: none of {', '.join(steps.transfer_syntaxes)}"
                              f" can be made from {describe(syntax)}")
    if isinstance(dest, FolderConfig):
        lines += _folder_lines(dest, ds)
    if dest.window is not None:
        lines.append(f"     only sent between {dest.window.start} and {dest.window.end}")
    return lines


def _folder_lines(dest: FolderConfig, ds: Any) -> list[str]:
    """Where the folder destination would store it: the delivery's own check (`placement`),
    on the header as morphed and de-identified above."""
    from router.core.errors import DeliveryError
    from workers.destinations.folder import UID_KEYWORDS, placement

    tags = {k: str(ds.get(k) or "") for k in UID_KEYWORDS}
    # The sender's C-STORE names the instance as its file meta does.
    sop = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", ""))
    try:
        where = placement(tags, sop)
    except DeliveryError as exc:
        return [f"     DEAD LETTER ({exc.reason}): {exc}"]
    return [f"     stored as {dest.path / where.relative}",
            *(f"     {note}" for note in where.notes)]


def _deid_lines(ds: Any, deid: Any) -> list[str]:
    import tempfile

    from workers.transforms.deidentify import deidentify
    from workers.transforms.uid_map import UidMap

    with tempfile.TemporaryDirectory() as tmp:  # a throwaway map: nothing is recorded
        uids = UidMap(Path(tmp) / "key", Path(tmp) / "uids.sqlite")
        changes = deidentify(ds, deid, uids)
    shown = ", ".join(changes[:12]) + (f", ... ({len(changes)} in all)"
                                       if len(changes) > 12 else "")
    return [f"     de-identified (PS3.15 basic profile): {shown}"]
