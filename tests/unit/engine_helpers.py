"""Shared pieces of the router/dicom/engine tests: an associated requestor/acceptor pair,
hand-built P-DATA-TF PDUs, and events normalised so that different chunkings compare."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from router.dicom.engine import (
    AssociateAC,
    AssociateRQ,
    Association,
    DataFragment,
    Event,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def make_rq(max_length: int = 16384) -> AssociateRQ:
    return AssociateRQ(
        "SCP", "SCU",
        (PresentationContextRQ(1, CT, (EXPLICIT,)), PresentationContextRQ(3, VERIFICATION,
                                                                          (IMPLICIT,))),
        UserInformation(max_length=max_length, implementation_class_uid="1.2.3.4"),
    )


def make_ac(max_length: int = 16384) -> AssociateAC:
    return AssociateAC(
        "SCP", "SCU",
        (PresentationContextAC(1, 0, EXPLICIT), PresentationContextAC(3, 0, IMPLICIT)),
        UserInformation(max_length=max_length, implementation_class_uid="1.2.3.5"),
    )


def associated(rq_max: int = 16384, ac_max: int = 16384, **options: int | float,
               ) -> tuple[Association, Association]:
    """(requestor, acceptor), both in Sta6."""
    scu, scp = Association.requestor(**options), Association.acceptor(**options)
    scp.receive_data(scu.send(make_rq(rq_max)))
    scu.receive_data(scp.send(make_ac(ac_max)))
    return scu, scp


def pdv(context_id: int, control: int, value: bytes) -> bytes:
    return struct.pack(">IBB", len(value) + 2, context_id, control) + value


def pdata(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BxI", 4, len(body)) + body


def split_message(context_id: int, command: bytes, dataset: bytes | None, sizes: Sequence[int],
                  pdvs_per_pdu: int) -> bytes:
    """A message as P-DATA-TF PDUs: command then dataset (None: none) cut into PDVs of the
    given sizes (cycled), grouped pdvs_per_pdu to a PDU."""
    items: list[bytes] = []
    parts = [(0x01, command)] + ([] if dataset is None else [(0x00, dataset)])
    for control, value in parts:
        pos, i = 0, 0
        while True:
            n = sizes[i % len(sizes)]
            i += 1
            chunk = value[pos : pos + n]
            pos += n
            last = pos >= len(value)
            items.append(pdv(context_id, control | (0x02 if last else 0), chunk))
            if last:
                break
    return b"".join(pdata(*items[i : i + pdvs_per_pdu])
                    for i in range(0, len(items), pdvs_per_pdu))


def chunks(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        if pos >= len(data):
            break
        out.append(data[pos : pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


def normalise(events: Iterable[Event]) -> list[object]:
    """Copy data out of memoryviews and merge consecutive fragments of one message."""
    out: list[object] = []
    for event in events:
        if isinstance(event, DataFragment):
            data = bytes(event.data)
            previous = out[-1] if out else None
            if isinstance(previous, DataFragment) and not previous.last:
                out[-1] = DataFragment(event.context_id, bytes(previous.data) + data, event.last)
                continue
            event = DataFragment(event.context_id, data, event.last)
        out.append(event)
    return out


def feed(engine: Association, pieces: Iterable[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += engine.receive_data(piece)
    return events
