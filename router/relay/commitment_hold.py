"""What the broker is to wait for before it relays a storage commitment N-ACTION.

The acceptor decodes the request's Referenced SOP Instance UIDs and names the destinations
whose queue must no longer hold them: each upstream with a `commitment_hold`, and every
DICOM destination at the same address (AE title, host and port: a PACS configured once to
store to and once to query). The broker holds the request while one of those instances is
pending there, at most `commitment_hold` seconds (router/broker/commitment_holds.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from router.core.config import RouterConfig
from router.core.config.destinations import DicomDestination

log = logging.getLogger(__name__)

# A longer request holds on its first this many instances (about 640 KB of UIDs in the
# request's header): a modality commits its last study, not an archive.
MAX_HELD_INSTANCES = 10_000


@dataclass(frozen=True)
class CommitmentHold:
    seconds: float
    destinations: list[str]
    instances: list[str]


NO_HOLD = CommitmentHold(0.0, [], [])


def commitment_hold(config: RouterConfig, upstreams: list[str], dataset: Any
                    ) -> CommitmentHold:
    """The hold of an N-ACTION to `upstreams` with this (decoded) request dataset."""
    holding: list[DicomDestination] = []
    for name in upstreams:
        upstream = config.destinations.get(name)
        if isinstance(upstream, DicomDestination) and upstream.commitment_hold > 0:
            holding.append(upstream)
    if not holding:
        return NO_HOLD
    seconds = max(d.commitment_hold for d in holding)
    addresses = {_address(d) for d in holding}
    destinations = [name for name, d in config.destinations.items()
                    if isinstance(d, DicomDestination) and _address(d) in addresses]
    instances = referenced_instances(dataset)
    if not instances:
        return NO_HOLD
    return CommitmentHold(seconds, destinations, instances)


def referenced_instances(dataset: Any) -> list[str]:
    """The Referenced SOP Instance UIDs of the Referenced SOP Sequence, at most
    MAX_HELD_INSTANCES (the first ones); none from a sequence that cannot be read."""
    try:
        items = dataset.get("ReferencedSOPSequence") or []
        uids: list[str] = []
        for item in items:
            uid = str(item.get("ReferencedSOPInstanceUID", "") or "").strip("\0 ")
            if not uid:
                continue
            if len(uids) == MAX_HELD_INSTANCES:
                # Only once there is one more (exactly 10,000 is not "more"), and not "held":
                # the broker holds it only if one of these is still pending.
                log.info("storage commitment request with more than %d instances: only its "
                         "first %d are waited for if it is held", MAX_HELD_INSTANCES,
                         MAX_HELD_INSTANCES)
                break
            uids.append(uid)
        return uids
    except Exception as exc:  # a malformed sequence: relayed at once, the upstream judges
        log.warning("storage commitment request: its Referenced SOP Sequence cannot be "
                    "read (%s): relayed without waiting for its instances", exc)
        return []


def _address(destination: DicomDestination) -> tuple[str, str, int]:
    return (destination.ae_title, str(destination.host), destination.port)
