"""router/acceptor/store_receiver.py: the Part 10 header it writes (read back by pydicom),
the dataset limit, a full disk and other write errors, discard."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from router.acceptor import store_receiver
from router.acceptor.store_receiver import StoreReceiver, file_meta

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
INSTANCE = "1.2.826.0.1.3680043.9.9999.2.1"
IMPL_UID, IMPL_VERSION = "1.2.826.0.1.3680043.9.9999.1", "ROUTER_1"


def encoded(sop_class: str = CT, instance: str = INSTANCE, *, implicit: bool = False) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P1"
    ds.Modality = "CT"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_file_meta_and_dataset_read_back_with_pydicom() -> None:
    for syntax, implicit in ((EXPLICIT, False), (IMPLICIT, True)):
        data = file_meta(CT, INSTANCE, syntax, IMPL_UID, IMPL_VERSION) + encoded(
            implicit=implicit)
        ds = pydicom.dcmread(io.BytesIO(data))
        meta = ds.file_meta
        assert meta.MediaStorageSOPClassUID == CT
        assert meta.MediaStorageSOPInstanceUID == INSTANCE
        assert meta.TransferSyntaxUID == syntax
        assert meta.ImplementationClassUID == IMPL_UID
        assert meta.ImplementationVersionName == IMPL_VERSION
        assert meta.FileMetaInformationVersion == b"\x00\x01"
        assert (ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID) == (CT, INSTANCE, "P1")


def test_odd_length_values_are_padded_and_the_group_length_is_exact() -> None:
    meta = file_meta("1.2.3", "1.2.34", EXPLICIT, "1.2", "ODD")
    assert meta[:132] == b"\0" * 128 + b"DICM"
    group_length = int.from_bytes(meta[140:144], "little")
    assert len(meta) == 144 + group_length  # nothing of group 0002 outside its length
    assert len(meta) % 2 == 0
    ds = pydicom.dcmread(io.BytesIO(meta + encoded()))
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.3"
    assert ds.file_meta.ImplementationVersionName == "ODD"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom: they are invalid
@pytest.mark.parametrize("hostile", ["1." * 100, "1.2.\u00e9\u4e2d.3", "../../x" * 30, ""])
def test_hostile_uids_still_encode_and_the_file_stays_readable(hostile: str) -> None:
    # A sender's UID goes into a 2-byte length field: 200 characters or non-ASCII text
    # must neither raise struct.error nor break the file for the worker that reads it.
    meta = file_meta(hostile, hostile, EXPLICIT, IMPL_UID, hostile)
    ds = pydicom.dcmread(io.BytesIO(meta + encoded()))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT
    assert len(str(ds.file_meta.MediaStorageSOPInstanceUID)) <= 64
    assert ds.SOPInstanceUID == INSTANCE  # the dataset after the meta is intact


def test_fragments_are_written_after_the_meta(tmp_path: Path) -> None:
    meta, dataset = file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, IMPL_VERSION), encoded()
    receiver = StoreReceiver(tmp_path, meta, limit=None)
    for start in range(0, len(dataset), 7):
        receiver.write_parts([memoryview(dataset)[start : start + 7]])
    path = receiver.finish()
    assert path.parent == tmp_path and path.read_bytes() == meta + dataset
    assert receiver.received == len(dataset)
    assert not receiver.truncated and not receiver.disk_full
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_dataset_up_to_the_limit_is_kept(tmp_path: Path) -> None:
    meta, dataset = file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, IMPL_VERSION), encoded()
    receiver = StoreReceiver(tmp_path, meta, limit=len(dataset))
    receiver.write_parts([dataset])
    assert receiver.finish().read_bytes() == meta + dataset
    assert not receiver.truncated


def test_past_the_limit_nothing_is_kept_and_every_byte_is_counted(tmp_path: Path) -> None:
    meta = file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, IMPL_VERSION)
    receiver = StoreReceiver(tmp_path, meta, limit=100)
    receiver.write_parts([b"a" * 60])
    receiver.write_parts([b"b" * 60])  # crosses the limit
    receiver.write_parts([b"c" * 1000])  # received into nothing
    path = receiver.finish()
    assert receiver.truncated and not receiver.disk_full
    assert receiver.received == 1120
    assert path.read_bytes() == b""  # its space freed at once, meta included


def test_runs_of_fragments_go_in_order_past_the_iovec_limit(tmp_path: Path) -> None:
    meta, dataset = file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, IMPL_VERSION), os.urandom(5000)
    pieces = [memoryview(dataset)[start : start + 3] for start in range(0, len(dataset), 3)]
    assert len(pieces) > 2 * store_receiver.IOV_BATCH  # more buffers than one writev takes
    receiver = StoreReceiver(tmp_path, meta, limit=None)
    receiver.write_parts([b"", *pieces[:10], b""])  # empty fragments are nothing
    receiver.write_parts(pieces[10:])
    assert receiver.finish().read_bytes() == meta + dataset
    assert receiver.received == len(dataset)


class ShortWritesOs:
    """The module's `os`, whose writev writes at most `most` bytes a call (as a write into a
    nearly full disk or past a signal may); the rest of os is the real one."""

    def __init__(self, most: int) -> None:
        self.most, self.calls = most, 0

    def writev(self, fd: int, buffers: list[memoryview]) -> int:
        self.calls += 1
        return os.write(fd, b"".join(buffers)[: self.most])

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_short_writes_are_resumed_where_they_stopped(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    meta, dataset = file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, IMPL_VERSION), encoded()
    receiver = StoreReceiver(tmp_path, meta, limit=None)
    fake = ShortWritesOs(5)  # cuts inside a part and across parts
    monkeypatch.setattr(store_receiver, "os", fake)
    receiver.write_parts([memoryview(dataset)[start : start + 7]
                          for start in range(0, len(dataset), 7)])
    monkeypatch.undo()
    assert receiver.finish().read_bytes() == meta + dataset
    assert fake.calls >= len(dataset) // 5


class FailingOs:
    """The module's `os`, whose writev fails with `error` once `failing` is set (a full disk
    cannot be made portably without root; the rest of os is the real one)."""

    def __init__(self, error: int) -> None:
        self.error = error
        self.failing = False

    def writev(self, fd: int, buffers: list[memoryview]) -> int:
        if self.failing:
            raise OSError(self.error, os.strerror(self.error))
        return os.writev(fd, buffers)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_marks_it_and_the_rest_is_received_into_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    fake = FailingOs(error)
    monkeypatch.setattr(store_receiver, "os", fake)
    receiver = StoreReceiver(tmp_path, file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, "V"), None)
    receiver.write_parts([b"x" * 10])
    fake.failing = True
    receiver.write_parts([b"y" * 10])  # no exception: the sender gets 0xA700, not an abort
    fake.failing = False
    receiver.write_parts([b"z" * 10])  # ignored, even though the disk would take it now
    path = receiver.finish()
    assert receiver.disk_full and not receiver.truncated
    assert receiver.received == 30
    assert path.read_bytes() == b""


def test_disk_full_while_writing_the_meta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          ) -> None:
    fake = FailingOs(errno.ENOSPC)
    fake.failing = True
    monkeypatch.setattr(store_receiver, "os", fake)
    receiver = StoreReceiver(tmp_path, file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, "V"), None)
    receiver.write_parts([b"x" * 10])
    assert receiver.disk_full and receiver.received == 10
    receiver.discard()
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_propagate_and_remove_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FailingOs(errno.EIO)
    monkeypatch.setattr(store_receiver, "os", fake)
    receiver = StoreReceiver(tmp_path, file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, "V"), None)
    fake.failing = True
    with pytest.raises(OSError) as raised:
        receiver.write_parts([b"x" * 10])
    assert raised.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []
    assert not receiver.disk_full
    receiver.discard()  # the caller's cleanup after the error is harmless


def test_io_error_on_the_meta_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             ) -> None:
    fake = FailingOs(errno.EIO)
    fake.failing = True
    monkeypatch.setattr(store_receiver, "os", fake)
    with pytest.raises(OSError):
        StoreReceiver(tmp_path, file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, "V"), None)
    assert list(tmp_path.iterdir()) == []


def test_discard_removes_the_file_and_is_idempotent(tmp_path: Path) -> None:
    receiver = StoreReceiver(tmp_path, file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, "V"), None)
    receiver.write_parts([b"partial"])
    assert receiver.path.exists()
    receiver.discard()
    receiver.discard()
    assert list(tmp_path.iterdir()) == []
    receiver.write_parts([b"late"])  # a fragment after the discard is received into nothing
    assert list(tmp_path.iterdir()) == []


def test_discard_after_finish_removes_the_file(tmp_path: Path) -> None:
    receiver = StoreReceiver(tmp_path, file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, "V"), None)
    receiver.finish()
    receiver.discard()
    assert list(tmp_path.iterdir()) == []


def test_each_receiver_has_its_own_file(tmp_path: Path) -> None:
    meta = file_meta(CT, INSTANCE, EXPLICIT, IMPL_UID, "V")
    first, second = StoreReceiver(tmp_path, meta, None), StoreReceiver(tmp_path, meta, None)
    first.write_parts([b"1"])
    second.write_parts([b"2"])
    assert first.finish() != second.finish()
    assert first.path.read_bytes()[-1:] == b"1" and second.path.read_bytes()[-1:] == b"2"
