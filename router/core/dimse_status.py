"""DIMSE status codes the router answers with, in one place (PS3.4 Annex B, PS3.7 Annex C)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    # Refused: Out of Resources. The sender may retry later: nothing was kept.
    OUT_OF_RESOURCES = 0xA700
    # Error: Cannot understand (0xC000-0xCFFF). The router uses sub-codes so that an operator
    # can tell the reasons apart in a sender's log; the ErrorComment says the same in words.
    CANNOT_UNDERSTAND = 0xC000
    INVALID_UID = 0xC001
    NO_ROUTE = 0xC002
    DATASET_TOO_LARGE = 0xC003
    REJECTED_BY_RULE = 0xC004  # a rule with `action: reject` matched
    # Processing failure (PS3.7 C.4.2): an unexpected error inside the router.
    PROCESSING_FAILURE = 0x0110


def is_success(status: int) -> bool:
    return status == Status.SUCCESS


def is_warning(status: int) -> bool:
    # Storage warnings (coercion, elements discarded, data set mismatch) mean the peer kept it.
    return status in (0x0001, 0xB000, 0xB006, 0xB007) or 0xB000 <= status <= 0xBFFF


def is_delivered(status: int) -> bool:
    return is_success(status) or is_warning(status)


def is_transient_failure(status: int) -> bool:
    # Out of resources (0xA7xx) and "busy"-like statuses can succeed later; others are permanent.
    return 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0212, 0xFE00)


# A relayed request that found no upstream, timed out or broke: the failure each command may
# answer with (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4: "Refused: Out of resources"; N-services:
# "Processing failure").
_RELAY_FAILURE = {"C-FIND": 0xA700, "C-GET": 0xA701, "C-MOVE": 0xA701}
# No rule routes this request: C-services "Unable to process", N-services "No such SOP class".
_RELAY_NO_ROUTE = {"C-FIND": 0xC002, "C-GET": 0xC002, "C-MOVE": 0xC002}


def relay_failure_status(command: str) -> int:
    return _RELAY_FAILURE.get(command, 0x0110)


def relay_no_route_status(command: str) -> int:
    return _RELAY_NO_ROUTE.get(command, 0x0118)
