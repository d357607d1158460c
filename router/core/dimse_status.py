"""DIMSE status codes and A-ASSOCIATE-RJ reasons the router uses, in one place (PS3.4
Annex B and C, PS3.7 Annex C, PS3.8 Table 9-21). No other module writes them as numbers."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class Status(IntEnum):
    SUCCESS = 0x0000
    # Refused: Out of Resources. The sender may retry later: nothing was kept.
    OUT_OF_RESOURCES = 0xA700
    # Error: Data Set does not match SOP Class (PS3.4 B.2.3): the dataset's SOP Class or
    # Instance UID is not the command's.
    DATASET_DOES_NOT_MATCH = 0xA900
    # Error: Cannot understand (0xC000-0xCFFF). The router uses sub-codes so that an operator
    # can tell the reasons apart in a sender's log; the ErrorComment says the same in words.
    CANNOT_UNDERSTAND = 0xC000
    INVALID_UID = 0xC001
    NO_ROUTE = 0xC002
    DATASET_TOO_LARGE = 0xC003
    REJECTED_BY_RULE = 0xC004  # a rule with `action: reject` matched
    PATTERN_TOO_SLOW = 0xC006  # a rule's regex ran past its deadline on this instance
    # Processing failure (PS3.7 C.4.2): an unexpected error inside the router.
    PROCESSING_FAILURE = 0x0110
    NO_SUCH_SOP_CLASS = 0x0118
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # e.g. a C-STORE whose SOP class is not its context's
    # C-FIND/C-GET/C-MOVE (PS3.4 C.4): more answers follow; cancelled; sub-operations.
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01  # pending, some optional keys not supported
    CANCEL = 0xFE00
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA701
    UNABLE_TO_PERFORM_SUB_OPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    # C-MOVE "Unable to process" (PS3.4 C.4.2.1.5, 0xCxxx): the move destination is known
    # but de-identifies or morphs what it gets, which a relayed move cannot do.
    MOVE_DESTINATION_TRANSFORMS = 0xC005
    SUB_OPERATIONS_WITH_FAILURES = 0xB000


PENDING_STATUSES = (Status.PENDING, Status.PENDING_WARNING)


class Reject(NamedTuple):
    """An A-ASSOCIATE-RJ's (result, source, reason), PS3.8 Table 9-21."""

    result: int  # 1 rejected-permanent, 2 rejected-transient
    source: int  # 1 service-user, 2 service-provider (ACSE), 3 service-provider (presentation)
    reason: int


NO_REASON_GIVEN = Reject(1, 1, 1)
CALLING_AE_NOT_RECOGNISED = Reject(1, 1, 3)
CALLED_AE_NOT_RECOGNISED = Reject(1, 1, 7)
TEMPORARY_CONGESTION = Reject(2, 3, 1)
LOCAL_LIMIT_EXCEEDED = Reject(2, 3, 2)


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
_RELAY_FAILURE = {"C-FIND": Status.OUT_OF_RESOURCES,
                  "C-GET": Status.OUT_OF_RESOURCES_SUB_OPERATIONS,
                  "C-MOVE": Status.OUT_OF_RESOURCES_SUB_OPERATIONS}
# No rule routes this request: C-services "Unable to process", N-services "No such SOP class".
_RELAY_NO_ROUTE = {"C-FIND": Status.NO_ROUTE, "C-GET": Status.NO_ROUTE, "C-MOVE": Status.NO_ROUTE}


def relay_failure_status(command: str) -> int:
    return _RELAY_FAILURE.get(command, Status.PROCESSING_FAILURE)


def relay_no_route_status(command: str) -> int:
    return _RELAY_NO_ROUTE.get(command, Status.NO_SUCH_SOP_CLASS)
