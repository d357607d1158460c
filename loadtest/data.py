"""Benchmark data: generated once per (size, count, mix) with tests/dicom_samples.py, cached."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage

from tests.dicom_samples import (
    ALL_SYNTAXES,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    generate_mixed_set,
    write_instance,
)


@dataclass(frozen=True)
class Size:
    """One instance size of the benchmark."""

    name: str
    label: str
    bytes: int
    frames: int
    sop_class: str


SIZES: dict[str, Size] = {
    "10k": Size("10k", "10 KB CT", 10_000, 1, CTImageStorage),
    "0.5m": Size("0.5m", "0.5 MB CT", 500_000, 1, CTImageStorage),
    "50m": Size("50m", "50 MB multi-frame", 50_000_000, 100, EnhancedCTImageStorage),
}

# Mixed sets skip Deflated: a sender (storescu) inflates and re-deflates it, which would
# measure zlib rather than the network path.
MIXED_SYNTAXES = tuple(ts for ts in ALL_SYNTAXES if ts != DEFLATED_EXPLICIT_VR_LE)


@dataclass(frozen=True)
class DataSet:
    size: Size
    files: list[Path]
    total_bytes: int
    # (SOP class, transfer syntax) pairs, for storescu's -xf association config.
    contexts: list[tuple[str, str]]

    def subset(self, count: int) -> DataSet:
        """The first count files (the relayed cases send fewer than direct: same rate, less
        waiting)."""
        if count >= len(self.files):
            return self
        files = self.files[:count]
        return DataSet(self.size, files, sum(p.stat().st_size for p in files), self.contexts)

    def split(self, senders: int) -> list[list[Path]]:
        """Round-robin the files over senders (every sender gets at least one)."""
        groups = [self.files[i::senders] for i in range(senders)]
        return [g for g in groups if g]


def _generate(folder: Path, size: Size, count: int, mixed: bool) -> None:
    if mixed:
        generate_mixed_set(folder, count, size_bytes=size.bytes, syntaxes=MIXED_SYNTAXES)
        return
    for _ in range(count):
        write_instance(
            folder,
            sop_class=size.sop_class,
            transfer_syntax=EXPLICIT_VR_LE,
            size_bytes=size.bytes,
            frames=size.frames,
        )


def dataset(root: Path, size: Size, count: int, *, mixed: bool = False) -> DataSet:
    """The cached set of count instances of size, generating it when missing."""
    folder = root / f"{size.name}-{count}-{'mixed' if mixed else 'ct'}"
    manifest = folder / "manifest.json"
    if not manifest.exists():
        shutil.rmtree(folder, ignore_errors=True)
        print(f"generating {count} x {size.label}{' (mixed syntaxes)' if mixed else ''} ...",
              flush=True)
        _generate(folder / "files", size, count, mixed)
        files = sorted((folder / "files").iterdir())
        pairs = sorted({_context(p) for p in files})
        manifest.write_text(json.dumps({"contexts": pairs}))
    files = sorted((folder / "files").iterdir())
    pairs = [tuple(p) for p in json.loads(manifest.read_text())["contexts"]]
    total = sum(p.stat().st_size for p in files)
    return DataSet(size, files, total, pairs)  # type: ignore[arg-type]


def _context(path: Path) -> tuple[str, str]:
    meta = read_file_meta_info(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
