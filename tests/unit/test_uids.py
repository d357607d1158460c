"""router/core/uids.py: a UID names files on disk, so a hostile one must never pass."""

from __future__ import annotations

from typing import Any

import pytest

from router.core.dimse_status import Status
from router.core.errors import DimseRefusal, InvalidUID
from router.core.uids import is_valid_uid, require_uid

UID_64 = "1.2.840.10008." + "1" * 50  # 64 characters
assert len(UID_64) == 64

VALID = [
    "0",
    "1",
    "1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.5.1.4.1.1.2",
    "2.25.329800735698586629295641978511506172918",
    "1.0.2",
    "1.2.0",
    "0.0",
    UID_64,
]

HOSTILE: list[Any] = [
    "../../etc/x",
    "1.2.03",
    "01.2",
    "1..2",
    ".1.2",
    "1.2.",
    "",
    UID_64 + "1",  # 65 characters
    "1.2.3/4",
    "1.2.3\\4",
    "1.2.3\x00",
    "1.2.3\n",
    " 1.2.3",
    "1.2.3 ",
    "1.2.a",
    "1.2.-3",
    "1.2.+3",
    "1.2.\u0663",  # ARABIC-INDIC DIGIT THREE: a unicode digit, not [0-9]
    None,
    123,
    1.2,
    b"1.2.3",
    ["1.2.3"],
]


@pytest.mark.parametrize("uid", VALID)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid) is True
    assert require_uid(uid, "SOPInstanceUID") == uid


@pytest.mark.parametrize("uid", HOSTILE, ids=repr)
def test_hostile_uids_are_invalid(uid: Any) -> None:
    assert is_valid_uid(uid) is False


@pytest.mark.parametrize("uid", HOSTILE, ids=repr)
def test_require_uid_refuses_hostile_uids_naming_the_attribute(uid: Any) -> None:
    with pytest.raises(InvalidUID) as info:
        require_uid(uid, "AffectedSOPInstanceUID")

    assert str(info.value).startswith("AffectedSOPInstanceUID ")
    assert str(info.value).endswith("is not a valid DICOM UID")
    assert info.value.status == Status.INVALID_UID


def test_invalid_uid_is_a_dimse_refusal_with_status_c001() -> None:
    assert issubclass(InvalidUID, DimseRefusal)
    assert InvalidUID("x").status == 0xC001


def test_require_uid_message_truncates_a_huge_value() -> None:
    with pytest.raises(InvalidUID) as info:
        require_uid("9" * 10_000, "SOPInstanceUID")

    assert len(str(info.value)) < 200
