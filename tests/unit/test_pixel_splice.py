"""Morph and de-identification of large instances: the pixel data is copied from disk,
never held in memory, and arrives byte for byte (workers/transforms/pixel_splice.py)."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, MRImageStorage

from router.core.deid_spec import DeidentifyConfig
from router.core.morph_spec import DeleteAction, SetAction
from tests.dicom_samples import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_BASELINE,
    write_instance,
)
from workers.transforms.deidentify import deidentify_file
from workers.transforms.morph import morph_file
from workers.transforms.pixel_splice import _ends_file, read_head
from workers.transforms.uid_map import UidMap

MIB = 1 << 20
STATION = SetAction(action="set", tag="StationName", value="ROUTED")


@pytest.fixture
def uids(tmp_path: Path) -> Iterator[UidMap]:
    with UidMap(tmp_path / "deid.key", tmp_path / "deid-map.sqlite3") as uid_map:
        yield uid_map


def morphed(source: Path, target: Path, _: UidMap) -> None:
    morph_file(source, target, [STATION])


def deidentified(source: Path, target: Path, uids: UidMap) -> None:
    deidentify_file(source, target, DeidentifyConfig(), uids)


Transform = Callable[[Path, Path, UidMap], None]
TRANSFORMS = [pytest.param(morphed, id="morph"), pytest.param(deidentified, id="deidentify")]


def pixels(path: Path) -> bytes:
    return bytes(pydicom.dcmread(path).PixelData)


def peak_bytes(work: Callable[[], None]) -> int:
    """The most Python allocated at once while `work` ran (tracemalloc), above its start."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, JPEG_BASELINE])
def test_pixel_data_is_never_held_in_memory(transform: Transform, syntax: str,
                                            tmp_path: Path, uids: UidMap) -> None:
    # Read whole, a 24 MB instance took 48 MB (its value, then the write's copy): a 4 GB
    # whole-slide image 8 GB of the worker per delivery thread.
    source = write_instance(tmp_path / "in", sop_class=MRImageStorage, transfer_syntax=syntax,
                            size_bytes=24 * MIB, frames=4)
    target = tmp_path / "out.dcm"
    assert peak_bytes(lambda: transform(source, target, uids)) < 4 * MIB
    assert pixels(target) == pixels(source)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE,
                                    JPEG_BASELINE, DEFLATED_EXPLICIT_VR_LE])
def test_the_copy_reads_as_the_source_with_the_change(transform: Transform, syntax: str,
                                                      tmp_path: Path, uids: UidMap) -> None:
    source = write_instance(tmp_path / "in", sop_class=CTImageStorage, transfer_syntax=syntax,
                            size_bytes=300_000, frames=3 if syntax == JPEG_BASELINE else 1)
    target = tmp_path / "out.dcm"
    transform(source, target, uids)
    written = pydicom.dcmread(target)
    assert written.file_meta.TransferSyntaxUID == syntax
    assert written.PixelData == pydicom.dcmread(source).PixelData
    if transform is morphed:
        assert written.StationName == "ROUTED"
    else:
        assert written.PatientIdentityRemoved == "YES"


def test_what_follows_the_pixel_data_is_still_de_identified(tmp_path: Path,
                                                            uids: UidMap) -> None:
    # A Digital Signatures Sequence after the pixel data is removed (Table E.1-1, X): such a
    # file is read whole, as before.
    source = write_instance(tmp_path / "in", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE, size_bytes=100_000)
    ds = pydicom.dcmread(source)
    ds.add_new(0xFFFAFFFA, "SQ", [])
    ds.save_as(source, enforce_file_format=True)
    target = tmp_path / "out.dcm"
    deidentify_file(source, target, DeidentifyConfig(), uids)
    written = pydicom.dcmread(target)
    assert 0xFFFAFFFA not in written
    assert written.PixelData == ds.PixelData


def test_a_morph_that_names_the_pixel_data_still_applies(tmp_path: Path) -> None:
    source = write_instance(tmp_path / "in", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE, size_bytes=100_000)
    target = tmp_path / "out.dcm"
    morph_file(source, target, [DeleteAction(action="delete", tag="PixelData")])
    assert "PixelData" not in pydicom.dcmread(target)


def test_a_file_cut_short_in_its_pixel_data_is_not_spliced(tmp_path: Path) -> None:
    # Fragments that run past the end: read whole, so pydicom judges the file as before.
    source = write_instance(tmp_path / "in", sop_class=CTImageStorage,
                            transfer_syntax=JPEG_BASELINE, size_bytes=100_000)
    source.write_bytes(source.read_bytes()[:-20_000])
    with source.open("rb") as fh, pytest.warns(UserWarning, match="End of file reached"):
        assert read_head(fh)[1] is None


def test_undefined_length_pixel_data_past_4_gib_of_fragments_is_walked(tmp_path: Path) -> None:
    # Fragments add up past 2^32 (each under it: legal); the walk only reads their headers.
    fragment = 0xC0000000  # 3 GiB: two of them pass 4 GiB
    path = tmp_path / "sparse.bin"
    with path.open("wb") as fh:
        fh.write(struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF))
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
        for _ in range(2):
            fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, fragment))
            fh.seek(fragment, 1)  # a hole: no disk written
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    size = path.stat().st_size
    assert size > 1 << 32
    with path.open("rb") as fh:
        assert _ends_file(fh, 0, size, implicit=False, little=True)
        assert not _ends_file(fh, 0, size + 2, implicit=False, little=True)
