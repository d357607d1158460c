"""What a worker's relay tells the acceptor of an upstream's answer: the status elements it
passes on, or why there was no answer at all."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from workers.relay_tasks import RelayTask

RELAYED_STATUS_FIELDS = ("ErrorID", "OffendingElement", "AttributeIdentifierList")


def status_fields(status_ds: Dataset) -> dict[str, Any]:
    """The status elements besides Status and ErrorComment, as plain ints (tags included)."""
    fields: dict[str, Any] = {}
    for keyword in RELAYED_STATUS_FIELDS:
        value = status_ds.get(keyword)
        if value is None:
            continue
        if keyword == "ErrorID":
            fields[keyword] = int(value)
        else:
            # AT: a tag (an int) when VM 1, else a MultiValue of tags
            fields[keyword] = [int(Tag(t)) for t in ([value] if isinstance(value, int)
                                                    else value)]
    return fields


def no_answer(task: RelayTask, upstream: str) -> str:
    """Why a request got no response: the router gave up waiting (pynetdicom then aborts
    itself), or the upstream aborted or closed the association first."""
    assoc = task.assoc
    if task.silence is not None and task.silence.gave_up:
        return f"{upstream} did not answer in time"
    if assoc is not None and not getattr(assoc, "_sent_abort", True):
        return f"{upstream} aborted the association without answering"
    return f"{upstream} did not answer in time"
