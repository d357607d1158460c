"""Dead letters: a list with filters (destination, reason, age, calling AE, patient and
study from the instance's own header), one letter's details, replay (to its destination or
another) and purge. The actions go through the operator API (router/service/control_api.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from router.core.errors import RouterError
from router.core.letter_age import Age, Moment
from router.core.spool import Spool
from router.service import dead_letters
from router.service.console.auth import Identity
from router.service.console.html import age, button, e, field, form, page, select, table
from router.service.http_types import Response

HTML = "text/html; charset=utf-8"
MAX_ROWS = 500
TAGS = ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "AccessionNumber",
        "Modality", "SeriesInstanceUID", "SOPInstanceUID")
_ACTION = re.compile(r"/console/dead-letters/([0-9a-f]{8,64}\.[A-Za-z0-9_-]{1,64})/"
                     r"(replay|purge)")


def tags(instance: Path) -> dict[str, str]:
    """A few header tags of the dead letter's instance ({} if it cannot be read)."""
    from pydicom import dcmread  # only when a page needs them: the supervisor stays lean

    try:
        ds = dcmread(instance, stop_before_pixels=True, specific_tags=list(TAGS))
    except Exception:  # a damaged file is shown without its tags, never breaks the page
        return {}
    return {k: str(ds.get(k, "")) for k in TAGS if ds.get(k) is not None}


def _matches(letter: dead_letters.DeadLetter, params: dict[str, str]) -> bool:
    if params.get("calling_ae") and letter.job.calling_ae != params["calling_ae"]:
        return False
    patient, study = params.get("patient", ""), params.get("study", "")
    if not (patient or study):
        return True
    found = tags(letter.instance_path)
    if patient and patient.lower() not in (found.get("PatientID", "") + " " +
                                           found.get("PatientName", "")).lower():
        return False
    return not study or study == found.get("StudyInstanceUID")


def _age(letter_age: Age) -> str:
    if letter_age.stepped_back:
        return f"{age(letter_age.seconds)} (written before the clock stepped back)"
    return age(letter_age.seconds)


def listing(identity: Identity, spool: Spool, params: dict[str, str], names: list[str],
            message: str) -> Response:
    damaged: list[dead_letters.Damaged] = []
    try:
        selection = dead_letters.Filter(
            params.get("destination") or None, params.get("reason") or None,
            dead_letters.parse_age(params["older_than"]) if params.get("older_than") else None,
            dead_letters.parse_age(params["newer_than"]) if params.get("newer_than") else None)
        letters = [d for d in dead_letters.find(spool, selection, damaged)
                   if _matches(d, params)]
    except RouterError as exc:
        letters, message = [], str(exc)
    now = Moment.read()
    rows = [[f'<a href="/console/dead-letters/{e(d.id)}">{e(d.id)}</a>', e(d.destination),
             e(d.reason), e(d.job.calling_ae), e(_age(d.age(now))), e(d.detail[:120])]
            for d in letters[:MAX_ROWS]]
    filters = form("/console/dead-letters", identity, "".join([
        select("destination", ["", *names], params.get("destination", ""), "Destination"),
        field("reason", "Reason", params.get("reason", "")),
        field("older_than", "Older than (2h)", params.get("older_than", "")),
        field("newer_than", "Newer than (10m)", params.get("newer_than", "")),
        field("calling_ae", "Calling AE", params.get("calling_ae", "")),
        field("patient", "Patient ID or name", params.get("patient", "")),
        field("study", "Study Instance UID", params.get("study", "")),
        button("Filter")]), method="get", extra='class="filters"')
    shown = f"<p>{len(letters)} dead letter(s)" + \
        (f", the first {MAX_ROWS} shown" if len(letters) > MAX_ROWS else "") + "</p>"
    body = filters + shown + _bulk(identity, letters[:MAX_ROWS], names) + table(
        ["Id", "Destination", "Reason", "Calling AE", "Age", "Detail"], rows, "letters")
    if damaged:  # one bad record must not hide the others: shown apart, each to purge
        body += f"<p>{len(damaged)} record(s) cannot be read</p>" + table(
            ["Id", "File", "Why"],
            [[f'<a href="/console/dead-letters/{e(d.id)}">{e(d.id)}</a>',
              e(d.record_path), e(d.why)] for d in damaged[:MAX_ROWS]], "unreadable")
    return Response(200, page("Dead letters", body, identity, message, script=True), HTML)


def _bulk(identity: Identity, letters: list[dead_letters.DeadLetter], names: list[str]
          ) -> str:
    """Replay or purge every dead letter shown (by id: what the operator saw is what goes)."""
    if not identity.can_act or not letters:
        return ""
    ids = f'<input type="hidden" name="ids" value="{e(" ".join(d.id for d in letters))}">'
    count = len(letters)
    return '<div class="actions">' + form(
        "/console/dead-letters/replay", identity,
        ids + select("to", ["", *names], label="Replay all shown to (empty: each its own)")
        + button(f"Replay {count}"), confirm=f"Replay the {count} dead letter(s) shown?") \
        + form("/console/dead-letters/purge", identity, ids + button(f"Purge {count}", "danger"),
               confirm=f"Delete the {count} dead letter(s) shown for good?") + "</div>"


def detail(identity: Identity, spool: Spool, letter_id: str, names: list[str],
           message: str) -> Response:
    try:
        letter = dead_letters.get(spool, letter_id)
    except dead_letters.DamagedLetter as exc:
        return _damaged(identity, exc.damaged, message)
    except RouterError as exc:
        return Response(404, page("Dead letter", f"<p>{e(exc)}</p>", identity), HTML)
    record: dict[str, Any] = letter.as_dict()
    facts = [[e(k), e(v)] for k, v in record.items() if k != "job"]
    facts += [[e(f"job.{k}"), e(v)] for k, v in record["job"].items()]
    facts += [[e(k), e(v)] for k, v in tags(letter.instance_path).items()]
    body = table(["Field", "Value"], facts, "detail")
    if identity.can_act:
        base = f"/console/dead-letters/{letter.id}"
        options = [letter.destination, *[n for n in names if n != letter.destination]]
        body += '<div class="actions">' + form(
            f"{base}/replay", identity, select("to", options, letter.destination, "Replay to")
            + button("Replay"), confirm=f"Replay {letter.id}?") + form(
            f"{base}/purge", identity, button("Purge", "danger"),
            confirm=f"Delete {letter.id} for good?") + "</div>"
    return Response(200, page(f"Dead letter {letter.id}", body, identity, message,
                              script=True), HTML)


def _damaged(identity: Identity, damaged: dead_letters.Damaged, message: str) -> Response:
    """A record that cannot be read: what is wrong, and a purge (no replay: its destination
    and job are unknown)."""
    body = f"<p>This record cannot be read: {e(damaged.why)}</p>" + table(
        ["Field", "Value"], [[e(k), e(v)] for k, v in damaged.as_dict().items()], "detail")
    if identity.can_act:
        body += '<div class="actions">' + form(
            f"/console/dead-letters/{damaged.id}/purge", identity,
            button("Purge", "danger"), confirm=f"Delete {damaged.id} for good?") + "</div>"
    return Response(200, page(f"Dead letter {damaged.id}", body, identity, message,
                              script=True), HTML)


def api_call(path: str) -> tuple[str, str] | None:
    if path in ("/console/dead-letters/replay", "/console/dead-letters/purge"):
        return path.replace("/console/", "/api/"), "/console/dead-letters"
    match = _ACTION.fullmatch(path)
    if match is None:
        return None
    return f"/api/dead-letters/{match[1]}/{match[2]}", "/console/dead-letters"
