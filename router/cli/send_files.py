"""Planning a `dicom-router send`: read files header-only, deal them into shares, batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from router.core.errors import RouterError

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index, not an instance
_FILE_META = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")

Pair = tuple[str, str]  # (SOP class UID, transfer syntax UID)


class NotDicom(RouterError):
    """A file that cannot be sent as a DICOM Part 10 instance; the message says why."""


@dataclass(frozen=True)
class Instance:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    size: int

    @property
    def pair(self) -> Pair:
        return (self.sop_class, self.transfer_syntax)


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class Scan:
    instances: list[Instance] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


# --- files -------------------------------------------------------------------------------------

def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The files given, and every file under the folders given (recursively, sorted)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def read_header(path: Path) -> Instance:
    """The facts a C-STORE of the file needs, read without its pixel data; NotDicom if none."""
    try:
        ds = dcmread(path, stop_before_pixels=True,
                     specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except InvalidDicomError:
        raise NotDicom("not a DICOM Part 10 file (no 'DICM' prefix)") from None
    except Exception as exc:  # pydicom raises many kinds of errors on files that are not DICOM
        raise NotDicom(str(exc).split("\n")[0] or type(exc).__name__) from None
    meta = ds.file_meta
    missing = [keyword for keyword in _FILE_META if not meta.get(keyword)]
    if missing:
        raise NotDicom(f"no {', '.join(missing)} in its file meta")
    if meta.MediaStorageSOPClassUID == MEDIA_STORAGE_DIRECTORY:
        raise NotDicom("a DICOMDIR (an index of files), not an instance")
    return Instance(path, str(meta.MediaStorageSOPClassUID),
                    str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID),
                    path.stat().st_size)


def scan(paths: Iterable[Path], on_file: Callable[[], None] | None = None) -> Scan:
    found = Scan()
    for path in iter_files(paths):
        try:
            found.instances.append(read_header(path))
        except NotDicom as exc:
            found.skipped.append(Skipped(path, str(exc)))
        except OSError as exc:
            found.skipped.append(Skipped(path, exc.strerror or str(exc)))
        if on_file is not None:
            on_file()
    return found


# --- planning ----------------------------------------------------------------------------------

def split(instances: list[Instance], associations: int) -> list[list[Instance]]:
    """Deal the files round-robin into at most `associations` non-empty shares."""
    shares = [instances[n::associations] for n in range(associations)]
    return [share for share in shares if share]


def batches(instances: list[Instance], max_contexts: int = MAX_CONTEXTS) -> list[list[Instance]]:
    """Group files so that no group needs more than `max_contexts` distinct pairs."""
    pairs = sorted({instance.pair for instance in instances})
    group_of = {pair: n // max_contexts for n, pair in enumerate(pairs)}
    groups: list[list[Instance]] = [[] for _ in range(-(-len(pairs) // max_contexts))]
    for instance in instances:
        groups[group_of[instance.pair]].append(instance)
    return groups
