"""What the broker is to wait for before it relays a storage commitment N-ACTION.

The acceptor reads the request's Referenced SOP Instance UIDs (commitment_request.py) and
names the destinations whose queue must no longer hold them: each upstream with a
`commitment_hold`, and every DICOM destination at the same address (AE title, host and
port: a PACS configured once to store to and once to query). The broker holds the request
while one of those instances is pending there, at most `commitment_hold` seconds
(router/broker/commitment_holds.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from router.core.config import RouterConfig
from router.core.config.destinations import DicomDestination
from router.relay.commitment_request import Unreadable, commitment_request

log = logging.getLogger(__name__)

# A longer request holds on its first this many instances (about 640 KB of UIDs in the
# request's header): a modality commits its last study, not an archive. The items after
# those are not read.
MAX_HELD_INSTANCES = 10_000


@dataclass(frozen=True)
class CommitmentHold:
    seconds: float
    destinations: list[str]
    instances: list[str]


NO_HOLD = CommitmentHold(0.0, [], [])


def commitment_hold(config: RouterConfig, upstreams: list[str], dataset: bytes,
                    implicit: bool) -> CommitmentHold:
    """The hold of an N-ACTION to `upstreams` with this request dataset (as received)."""
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
    instances = referenced_instances(dataset, implicit)
    if not instances:
        return NO_HOLD
    return CommitmentHold(seconds, destinations, instances)


def referenced_instances(dataset: bytes, implicit: bool) -> list[str]:
    """The Referenced SOP Instance UIDs of the first MAX_HELD_INSTANCES items of the
    Referenced SOP Sequence; none from a sequence that cannot be read."""
    try:
        request = commitment_request(dataset, implicit, MAX_HELD_INSTANCES)
    except Unreadable as exc:  # a malformed sequence: relayed at once, the upstream judges
        log.warning("storage commitment request: its Referenced SOP Sequence cannot be "
                    "read (%s): relayed without waiting for its instances", exc)
        return []
    if request.more:
        # Only once there is one more (exactly 10,000 is not "more"), and not "held": the
        # broker holds it only if one of these is still pending.
        log.info("storage commitment request with more than %d instances: only its first %d "
                 "are waited for if it is held", MAX_HELD_INSTANCES, MAX_HELD_INSTANCES)
    return request.instances


def _address(destination: DicomDestination) -> tuple[str, str, int]:
    return (destination.ae_title, str(destination.host), destination.port)
