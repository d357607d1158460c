"""Folder destination: <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm, Part 10."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from pydicom.errors import InvalidDicomError

from router.config import FolderDestination as FolderConfig
from router.errors import DeliveryError, InvalidUID
from router.header_tags import read_tags
from router.messages import JobHeader
from router.spool import fsync_path
from router.uids import require_uid

_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class FolderDestination:
    def __init__(self, name: str, config: FolderConfig) -> None:
        self.name = name
        self.root = config.path.resolve()
        self.fsync = config.fsync

    def target_path(self, source: Path) -> Path:
        """Where the instance goes; raises a permanent DeliveryError for hostile UIDs."""
        try:
            tags = read_tags(source, _UID_KEYWORDS)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise DeliveryError("unreadable", f"cannot read the instance: {exc}",
                                transient=False) from exc
        try:
            study, series, sop = (require_uid(tags.get(k), k) for k in _UID_KEYWORDS)
        except InvalidUID as exc:
            raise DeliveryError("invalid_uid", str(exc), transient=False) from exc
        target = (self.root / study / series / f"{sop}.dcm").resolve()
        if not target.is_relative_to(self.root):  # belt and braces: UIDs are digits and dots
            raise DeliveryError("invalid_uid", f"{target} escapes {self.root}", transient=False)
        return target

    def deliver(self, job: JobHeader, source: Path) -> None:
        target = self.target_path(source)
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
