"""The two facts the router needs from a storage commitment's dataset, read from its bytes
(no I/O): the Transaction UID, and the first Referenced SOP Instance UIDs for the hold.

pydicom parses a sequence of undefined length whole as it decodes the dataset: an 8 MiB
N-ACTION holds about 120,000 items, which took 190 MB and 3.5 s of the acceptor as pydicom
objects, for each of the associations a peer may hold. This walks the bytes instead, stops
at the items it needs and skips the rest without building anything, so the cost is bounded
by the items taken, and by a pass over the bytes at worst. The dataset is relayed as
received: the upstream judges the rest. Little endian only, as every request the acceptor
takes (implicit or explicit VR).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

TRANSACTION_UID = 0x00081195
REFERENCED_SOP_SEQUENCE = 0x00081199
REFERENCED_SOP_INSTANCE_UID = 0x00081155
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})


class Unreadable(ValueError):
    """The bytes are not a dataset as far as they were read (truncated, a length past the
    end)."""


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str  # "" when there is none
    instances: list[str]  # the Referenced SOP Instance UIDs of the first `limit` items
    more: bool  # the sequence has more items than `limit`


def transaction_uid(data: bytes, implicit: bool) -> str:
    """The Transaction UID ("" when there is none), read up to its place only."""
    return _Walk(data, implicit).request(limit=0, stop_at=TRANSACTION_UID).transaction_uid


def commitment_request(data: bytes, implicit: bool, limit: int) -> CommitmentRequest:
    """The Transaction UID and the instances of the first `limit` items; Unreadable if the
    bytes read on the way are not a dataset."""
    return _Walk(data, implicit).request(limit, stop_at=REFERENCED_SOP_SEQUENCE)


class _Walk:
    def __init__(self, data: bytes, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.pos = 0

    def request(self, limit: int, stop_at: int) -> CommitmentRequest:
        transaction = ""
        while self.pos < len(self.data):
            tag, length = self._header()
            if tag > stop_at:  # elements come in ascending order: what we need has passed
                break
            if tag == TRANSACTION_UID:
                transaction = self._text(length)
                if stop_at == TRANSACTION_UID:
                    break
            elif tag == REFERENCED_SOP_SEQUENCE and tag == stop_at:
                instances, more = self._instances(length, limit)
                return CommitmentRequest(transaction, instances, more)
            else:
                self._skip(length)
        return CommitmentRequest(transaction, [], False)

    def _header(self) -> tuple[int, int]:
        """The next element's tag and value length; the position moves to its value."""
        group, element = self._unpack("<HH", 4)
        tag = group << 16 | element
        if self.implicit or group == 0xFFFE:  # items and delimiters have no VR
            (length,) = self._unpack("<L", 4)
            return tag, length
        vr = self.data[self.pos:self.pos + 2]
        if vr in LONG_VRS:
            self.pos += 4
            (length,) = self._unpack("<L", 4)
        else:
            self.pos += 2
            (length,) = self._unpack("<H", 2)
        return tag, length

    def _unpack(self, layout: str, size: int) -> tuple[int, ...]:
        if self.pos + size > len(self.data):
            raise Unreadable(f"truncated at byte {self.pos}")
        values = struct.unpack_from(layout, self.data, self.pos)
        self.pos += size
        return values

    def _text(self, length: int) -> str:
        end = self._end(length)
        value = self.data[self.pos:end].decode("ascii", "replace").strip("\0 ")
        self.pos = end
        return value

    def _end(self, length: int) -> int:
        if length == UNDEFINED or self.pos + length > len(self.data):
            raise Unreadable(f"a value of length {length:#x} at byte {self.pos}")
        return self.pos + length

    def _skip(self, length: int) -> None:
        """Past a value; one of undefined length (a sequence, an item, encapsulated data)
        ends at the delimiter that closes it, past those of what it nests."""
        if length != UNDEFINED:
            self.pos = self._end(length)
            return
        depth = 1
        while depth:
            tag, length = self._header()
            if tag in (ITEM_END, SEQUENCE_END):
                depth -= 1
            elif length == UNDEFINED:
                depth += 1
            else:
                self.pos = self._end(length)

    def _instances(self, length: int, limit: int) -> tuple[list[str], bool]:
        instances: list[str] = []
        for count, item_length in enumerate(self._items(length)):
            if count == limit:
                return instances, True
            uid = self._item_uid(item_length)
            if uid:
                instances.append(uid)
        return instances, False

    def _items(self, length: int) -> Iterator[int]:
        """Each item's length, the position at its first element. (Not checked against the
        bytes' length: the items after those taken need not be there.)"""
        end = None if length == UNDEFINED else self.pos + length
        while end is None or self.pos < end:
            tag, item_length = self._header()
            if tag == SEQUENCE_END and end is None:
                return
            if tag != ITEM:
                raise Unreadable(f"{tag:08X} where an item was expected")
            yield item_length

    def _item_uid(self, length: int) -> str:
        """The item's Referenced SOP Instance UID; the position moves past the item."""
        end = None if length == UNDEFINED else self._end(length)
        uid = ""
        while end is None or self.pos < end:
            tag, value_length = self._header()
            if tag == ITEM_END and end is None:
                break
            if tag == REFERENCED_SOP_INSTANCE_UID:
                uid = self._text(value_length)
            else:
                self._skip(value_length)
        return uid
