"""A storage commitment's Transaction UID and Referenced SOP Instance UIDs read from its
bytes (router/relay/commitment_request.py), in every length encoding pydicom writes."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from router.relay.commitment_request import Unreadable, commitment_request, transaction_uid

ENCODINGS = [(implicit, undefined) for implicit in (True, False) for undefined in (True, False)]


def item(uid: str, undefined: bool, nested: bool = False) -> Dataset:
    entry = Dataset()
    entry.is_undefined_length_sequence_item = undefined
    entry.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    entry.ReferencedSOPInstanceUID = uid
    if nested:  # something the walker must step over, as long as it is
        entry.ReferencedFrameNumber = [1, 2]
        inner = Dataset()
        inner.is_undefined_length_sequence_item = undefined
        inner.CodeMeaning = "X" * 64
        entry.PurposeOfReferenceCodeSequence = Sequence([inner, Dataset()])
        entry["PurposeOfReferenceCodeSequence"].is_undefined_length = undefined
    return entry


def request(uids: list[str], undefined: bool, failed: int = 0) -> Dataset:
    dataset = Dataset()
    dataset.TransactionUID = "1.2.3.999"
    if failed:  # an N-EVENT-REPORT's Failed SOP Sequence comes before the committed ones
        dataset.FailedSOPSequence = Sequence([item(f"9.{n}", undefined, nested=True)
                                              for n in range(failed)])
        dataset["FailedSOPSequence"].is_undefined_length = undefined
    dataset.ReferencedSOPSequence = Sequence([item(uid, undefined, nested=n % 2 == 1)
                                              for n, uid in enumerate(uids)])
    dataset["ReferencedSOPSequence"].is_undefined_length = undefined
    dataset.StorageMediaFileSetUID = "1.2.3.4"  # after the sequence: never read
    return dataset


@pytest.mark.parametrize(("implicit", "undefined"), ENCODINGS)
def test_the_uids_are_those_of_the_request(implicit: bool, undefined: bool) -> None:
    uids = [f"1.2.3.{n}" for n in range(7)]
    data = bytes(encode(request(uids, undefined, failed=3), implicit, True))
    read = commitment_request(data, implicit, limit=10)
    assert read.transaction_uid == "1.2.3.999" and read.instances == uids
    assert not read.more
    assert transaction_uid(data, implicit) == "1.2.3.999"


@pytest.mark.parametrize(("implicit", "undefined"), ENCODINGS)
def test_only_the_items_up_to_the_limit_are_read(implicit: bool, undefined: bool) -> None:
    data = bytes(encode(request([f"1.2.3.{n}" for n in range(5)], undefined), implicit, True))
    exactly = commitment_request(data, implicit, limit=5)
    assert len(exactly.instances) == 5 and not exactly.more
    read = commitment_request(data, implicit, limit=3)
    assert read.instances == ["1.2.3.0", "1.2.3.1", "1.2.3.2"] and read.more
    # What comes after the items taken is not read: a damaged tail changes nothing.
    cut = data[:len(data) * 3 // 4]
    assert commitment_request(cut, implicit, limit=1).instances == ["1.2.3.0"]


def test_an_item_without_a_uid_is_counted_but_gives_none() -> None:
    dataset = request(["1.2.3.0", "1.2.3.1"], undefined=True)
    del dataset.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    read = commitment_request(bytes(encode(dataset, True, True)), True, limit=1)
    assert read.instances == [] and read.more


def test_a_request_without_those_elements_has_none() -> None:
    assert commitment_request(b"", True, limit=5).transaction_uid == ""
    dataset = Dataset()
    dataset.PatientID = "X"
    data = bytes(encode(dataset, False, True))
    assert commitment_request(data, False, limit=5).instances == []
    assert transaction_uid(data, False) == ""


@pytest.mark.parametrize("implicit", [True, False])
def test_damaged_bytes_are_unreadable_not_an_exception_of_another_kind(implicit: bool) -> None:
    data = bytes(encode(request(["1.2.3.0", "1.2.3.1"], True), implicit, True))
    sequence_at = data.index(b"\x08\x00\x99\x11")
    for damaged in (data[:sequence_at + 30],  # cut inside an item
                    data[:sequence_at] + b"\x08\x00\x99\x11" + b"\xff" * 12,  # lengths past the end
                    data[:sequence_at + (8 if implicit else 12)] + b"\x08\x00\x50\x11" * 4):
        with pytest.raises(Unreadable):
            commitment_request(damaged, implicit, limit=10)


def test_a_huge_sequence_costs_only_the_items_taken() -> None:
    """120,000 items, as in an 8 MiB request: the limit's 10 are read, the rest not."""
    one = bytes(encode(request(["1.2.3.4"], undefined=True), True, True))
    sequence_at = one.index(b"\x08\x00\x99\x11") + 8
    item_bytes = one[sequence_at:one.index(b"\xfe\xff\xdd\xe0")]
    data = one[:sequence_at] + item_bytes * 120_000 + b"\xfe\xff\xdd\xe0\0\0\0\0"
    read = commitment_request(data, True, limit=10)
    assert read.instances == ["1.2.3.4"] * 10 and read.more
