"""Instances found in jobs/ at start without a header when the journal is damaged.

Normally such an instance is a commit a crash interrupted before its record was written:
its sender was never told Success, and it is deleted. But when a journal segment is damaged
in the middle (a disk error, a hand), records of acknowledged jobs may be what was lost.
Then each such instance is kept as a dead letter, reason `unconfirmed`, destination
`unrouted` (which rule routed it, and where, went with its record): an operator sees it in
`dicom-router dead-letters list` and replays it with `--to <destination>`, or purges it if
the sender sent it again. Read without pydicom: the supervisor runs this at start.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from router.core.letter_age import Moment
from router.core.messages import JobHeader

if TYPE_CHECKING:
    from router.core.spool import Spool

log = logging.getLogger(__name__)

UNROUTED = "unrouted"
_META = {0x0002: "sop_class_uid", 0x0003: "sop_instance_uid", 0x0010: "transfer_syntax_uid"}
_LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN")


def file_meta_uids(path: Path) -> dict[str, str]:
    """The SOP class, SOP instance and transfer syntax UIDs of a Part 10 file's meta (group
    0002, Explicit VR Little Endian), as far as they can be read; {} when there is none."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except OSError:
        return {}
    found: dict[str, str] = {}
    if head[128:132] != b"DICM":
        return found
    position = 132
    while position + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, position)
        if group != 0x0002:
            break
        vr = head[position + 4:position + 6]
        if vr in _LONG_VRS:
            if position + 12 > len(head):
                break
            length = struct.unpack_from("<I", head, position + 8)[0]
            position += 12
        else:
            length = struct.unpack_from("<H", head, position + 6)[0]
            position += 8
        if element in _META:
            value = head[position:position + length].rstrip(b"\0 ")
            found[_META[element]] = value.decode("ascii", "replace")
        position += length
    return found


def keep_unconfirmed(spool: Spool, job_ids: list[str]) -> list[str]:
    """Move each instance to the dead letters (reason `unconfirmed`); return their ids."""
    kept = []
    for job_id in job_ids:
        path = spool.instance_path(job_id)
        uids = file_meta_uids(path)
        try:
            stat = path.stat()
        except OSError:
            continue
        header = JobHeader(job_id, "", "", "", 0, uids.get("sop_class_uid", ""),
                           uids.get("sop_instance_uid", ""),
                           uids.get("transfer_syntax_uid", ""), stat.st_size, stat.st_mtime,
                           (), (UNROUTED,))
        record = {"reason": "unconfirmed", "attempts": 0, **Moment.read().stamp(),
                  "detail": "found in jobs/ at start without its journal record, while the "
                            "journal was damaged: it may have been acknowledged; replay it "
                            "with --to <destination>, or purge it if its sender sent it again"}
        spool.dead_letter(header, UNROUTED, record)
        os.unlink(path)
        kept.append(job_id)
    if kept:
        log.error("the journal was damaged: %d instance(s) without their record kept as "
                  "dead letters (reason unconfirmed, destination %s): %s", len(kept),
                  UNROUTED, ", ".join(kept[:20]))
    return kept
