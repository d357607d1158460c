"""Folder destination: <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm, Part 10.

An instance without a Study or Series Instance UID (absent or empty: pydicom's
JPEGLSNearLossless_16.dcm has none) is still stored, under `_unknown-study/` or
`_unknown-series/` in place of the missing level; without a SOP Instance UID in its dataset
it is named after the C-STORE's Affected SOP Instance UID, which the acceptor validated.
A UID that is present but not a valid UID (`../../x`) never names a file: a dead letter
`invalid_uid`. `placement` decides all of this for the delivery and for `route-test` alike.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from router.core.config import FolderDestination as FolderConfig
from router.core.durable_files import fsync_path
from router.core.errors import DeliveryError, InvalidUID
from router.core.messages import JobHeader
from router.core.uids import require_uid

UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
UNKNOWN_STUDY = "_unknown-study"  # not a UID (a UID has only digits and dots): no clash
UNKNOWN_SERIES = "_unknown-series"


@dataclass(frozen=True)
class Placement:
    relative: PurePosixPath  # under the destination's folder
    notes: tuple[str, ...]  # what an operator should know, e.g. a fallback folder


def placement(tags: Mapping[str, str], sop_instance_uid: str) -> Placement:
    """Where an instance with these header `tags` goes; DeliveryError (permanent) when a UID
    is present but invalid. `sop_instance_uid`: the C-STORE's, for a dataset without one."""
    notes: list[str] = []

    def level(keyword: str, fallback: str) -> str:
        value = tags.get(keyword, "").strip()
        if not value:
            notes.append(f"no {keyword}: stored under {fallback}/")
            return fallback
        return _uid(value, keyword)

    study = level("StudyInstanceUID", UNKNOWN_STUDY)
    series = level("SeriesInstanceUID", UNKNOWN_SERIES)
    sop = _uid(tags.get("SOPInstanceUID", "").strip() or sop_instance_uid, "SOPInstanceUID")
    return Placement(PurePosixPath(study, series, f"{sop}.dcm"), tuple(notes))


def _uid(value: str, keyword: str) -> str:
    try:
        return require_uid(value, keyword)
    except InvalidUID as exc:
        raise DeliveryError("invalid_uid", str(exc), transient=False) from exc


def read_placement(source: Path, sop_instance_uid: str) -> Placement:
    """`placement` of a file, reading only its UID tags; DeliveryError if it is unreadable."""
    # pydicom on first use: a worker that never writes to a folder does without it.
    from pydicom.errors import InvalidDicomError

    from router.core.header_tags import read_tags

    try:
        tags = read_tags(source, UID_KEYWORDS)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DeliveryError("unreadable", f"cannot read the instance: {exc}",
                            transient=False) from exc
    return placement(tags, sop_instance_uid)


class FolderDestination:
    def __init__(self, name: str, config: FolderConfig) -> None:
        self.name = name
        self.root = config.path.resolve()
        self.fsync = config.fsync

    def target_path(self, source: Path, sop_instance_uid: str = "") -> Path:
        """Where the instance goes; raises a permanent DeliveryError for hostile UIDs."""
        target = (self.root / read_placement(source, sop_instance_uid).relative).resolve()
        if not target.is_relative_to(self.root):  # belt and braces: UIDs are digits and dots
            raise DeliveryError("invalid_uid", f"{target} escapes {self.root}", transient=False)
        return target

    def deliver(self, job: JobHeader, source: Path) -> None:
        target = self.target_path(source, job.sop_instance_uid)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
            shutil.copyfile(source, tmp)  # the spooled file is already Part 10 with file meta
            if self.fsync:
                fsync_path(tmp)
            os.replace(tmp, target)
            if self.fsync:
                fsync_path(target.parent, directory=True)
        except OSError as exc:
            # A full or read-only disk may recover; the operator sees retries meanwhile.
            raise DeliveryError("io_error", f"cannot write {target}: {exc.strerror}",
                                transient=True) from exc

    def close(self) -> None:
        pass
