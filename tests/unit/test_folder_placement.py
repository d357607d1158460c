"""workers/folder_destination.placement: where a folder destination stores an instance."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from router.core.errors import DeliveryError
from workers.destinations.folder import placement

FULL = {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"}


def test_the_three_uids_name_the_path() -> None:
    assert placement(FULL, "9.9") == placement(FULL, "")
    assert placement(FULL, "9.9").relative == PurePosixPath("1.2/1.2.3/1.2.3.4.dcm")
    assert placement(FULL, "9.9").notes == ()


@pytest.mark.parametrize(("missing", "expected"), [
    ("StudyInstanceUID", "_unknown-study/1.2.3/1.2.3.4.dcm"),
    ("SeriesInstanceUID", "1.2/_unknown-series/1.2.3.4.dcm"),
    ("SOPInstanceUID", "1.2/1.2.3/9.9.dcm"),  # the C-STORE's Affected SOP Instance UID
])
def test_a_missing_or_empty_uid_has_a_fallback(missing: str, expected: str) -> None:
    for value in (None, "", "  "):
        tags = {k: v for k, v in FULL.items() if k != missing}
        if value is not None:
            tags[missing] = value
        assert placement(tags, "9.9").relative == PurePosixPath(expected)


def test_a_present_but_invalid_uid_is_a_permanent_refusal() -> None:
    with pytest.raises(DeliveryError, match="StudyInstanceUID") as caught:
        placement({**FULL, "StudyInstanceUID": "../../x"}, "9.9")
    assert caught.value.reason == "invalid_uid" and not caught.value.transient
    with pytest.raises(DeliveryError, match="SOPInstanceUID"):
        placement({k: v for k, v in FULL.items() if k != "SOPInstanceUID"}, "")
