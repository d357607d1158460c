"""router/dicom/engine P-DATA: a C-STORE message over many PDUs and PDVs gives the same
events however the bytes are cut; sending respects the peer's maximum PDU length; the
engine's own limit is enforced before anything is allocated."""

from __future__ import annotations

import random
import struct

import pytest
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem

from router.dicom.engine import (
    Association,
    CommandReceived,
    CStoreRQ,
    DataFragment,
    RemoteProtocolError,
    SendCommand,
    SendData,
)
from router.dicom.engine.dimse import encode_command

from .engine_helpers import CT, associated, chunks, feed, normalise, pdata, pdv, split_message

COMMAND = CStoreRQ(1, CT, "1.2.3.4.5.6")
DATASET = random.Random(13).randbytes(30_000)


def _message(sizes: list[int], pdvs_per_pdu: int) -> bytes:
    return split_message(1, encode_command(COMMAND), DATASET, sizes, pdvs_per_pdu)


EXPECTED = [CommandReceived(1, COMMAND), DataFragment(1, DATASET, True)]


@pytest.mark.parametrize(("sizes", "pdvs_per_pdu"), [
    ([100_000], 1), ([4000], 1), ([4000], 3), ([1, 7, 999, 30], 2), ([16378], 1),
])
def test_a_message_gives_the_same_events_however_it_is_cut(sizes: list[int],
                                                           pdvs_per_pdu: int) -> None:
    wire = _message(sizes, pdvs_per_pdu)
    _, whole = associated()
    assert normalise(whole.receive_data(wire)) == EXPECTED
    _, bytewise = associated()
    assert normalise(feed(bytewise, chunks(wire, [1] * len(wire)))) == EXPECTED
    rng = random.Random(len(wire))
    for _ in range(5):
        _, scp = associated()
        cuts = [rng.randint(1, 3000) for _ in range(len(wire))]
        assert normalise(feed(scp, chunks(wire, cuts))) == EXPECTED
        assert scp.buffered == 0


def test_a_command_split_over_pdvs_and_pdus() -> None:
    raw = encode_command(COMMAND)
    wire = (pdata(pdv(1, 0x01, raw[:10])) + pdata(pdv(1, 0x01, raw[10:20]), pdv(1, 0x03, raw[20:]))
            + pdata(pdv(1, 0x02, b"ab")))
    _, scp = associated()
    assert normalise(scp.receive_data(wire)) == [CommandReceived(1, COMMAND),
                                                 DataFragment(1, b"ab", True)]


def test_fragments_are_views_of_the_callers_bytes() -> None:
    _, scp = associated()
    wire = _message([100_000], 1)
    events = scp.receive_data(wire)
    fragment = events[-1]
    assert isinstance(fragment, DataFragment) and isinstance(fragment.data, memoryview)
    assert fragment.data.obj is wire


def _pdu_lengths(wire: bytes) -> list[int]:
    lengths, pos = [], 0
    while pos < len(wire):
        pdu_type, length = struct.unpack_from(">BxI", wire, pos)
        assert pdu_type == 4
        lengths.append(length)
        pos += 6 + length
    return lengths


@pytest.mark.parametrize("peer_max", [7, 4096, 16384, 1_000_000])
def test_sending_respects_the_peers_maximum_pdu(peer_max: int) -> None:
    scu, scp = associated(rq_max=16384, ac_max=min(peer_max, 16384),
                          max_pdu_length=max(peer_max, 16384), send_pdu_cap=1 << 20)
    scu.peer_max_pdu = peer_max  # as if the AC had said so
    wire = scu.send(SendCommand(1, COMMAND)) + scu.send(SendData(1, DATASET[:20_000], False))
    wire += scu.send(SendData(1, DATASET[20_000:], True))
    assert max(_pdu_lengths(wire)) <= peer_max
    assert normalise(scp.receive_data(wire)) == EXPECTED


def test_a_peer_without_limit_gets_our_cap() -> None:
    scu, _ = associated(send_pdu_cap=8192)
    scu.peer_max_pdu = 0
    lengths = _pdu_lengths(scu.send(SendData(1, DATASET)))
    assert max(lengths) == 8192


def test_an_overlong_pdata_is_refused_on_its_header() -> None:
    _, scp = associated(max_pdu_length=16384)
    header = struct.pack(">BxI", 4, 16385)
    with pytest.raises(RemoteProtocolError) as caught:
        scp.receive_data(header)
    assert (caught.value.abort_source, caught.value.abort_reason) == (2, 6)
    assert caught.value.to_send == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
    assert scp.buffered == 0


def test_an_overlong_command_set_is_refused() -> None:
    _, scp = associated(max_command_length=100)
    with pytest.raises(RemoteProtocolError):
        scp.receive_data(pdata(pdv(1, 0x01, b"\0" * 101)))


@pytest.mark.parametrize("wire", [
    pdata(pdv(5, 0x03, b"x")),  # context not accepted
    pdata(pdv(1, 0x02, b"x")),  # data before any command
    # the PDU ends inside a second PDV header
    struct.pack(">BxI", 4, 8) + struct.pack(">IBB", 3, 1, 0) + b"x\0",
    struct.pack(">BxI", 4, 6) + struct.pack(">IBB", 9, 1, 3),  # PDV longer than its PDU
])
def test_malformed_pdata_is_aborted(wire: bytes) -> None:
    _, scp = associated()
    with pytest.raises(RemoteProtocolError) as caught:
        scp.receive_data(wire)
    assert caught.value.abort_source == 2
    assert scp.receive_data(b"more bytes are discarded") == []


def test_our_pdata_decodes_in_pynetdicom_and_theirs_in_ours() -> None:
    scu, scp = associated()
    ours = scu.send(SendData(1, DATASET[:1000]))
    theirs = P_DATA_TF()
    theirs.decode(ours)
    assert [(v.context_id, v.data) for v in theirs.presentation_data_value_items] == [
        (1, b"\x02" + DATASET[:1000])]  # pynetdicom keeps the control header in data
    # Theirs: two PDVs (the command, the whole dataset) in one PDU.
    command = encode_command(COMMAND)
    built = P_DATA_TF()
    built.presentation_data_value_items = [PresentationDataValueItem() for _ in range(2)]
    for item, value in zip(built.presentation_data_value_items,
                           (b"\x03" + command, b"\x02" + DATASET), strict=True):
        item.presentation_context_id, item.presentation_data_value = 1, value
    assert normalise(scp.receive_data(built.encode())) == EXPECTED


def test_events_before_an_error_are_kept_on_it() -> None:
    _, scp = associated()
    good = _message([100_000], 1)
    with pytest.raises(RemoteProtocolError) as caught:
        scp.receive_data(good + b"\x0b\x00\x00\x00\x00\x00")
    assert normalise(caught.value.events) == EXPECTED
    assert caught.value.abort_reason == 1  # unrecognized PDU


def test_several_messages_in_one_call() -> None:
    _, scp = associated()
    wire = _message([5000], 2) * 3
    assert normalise(scp.receive_data(wire)) == EXPECTED * 3


@pytest.mark.parametrize("header", [
    struct.pack(">BxI", 1, 0xFFFFFFFF),  # an A-ASSOCIATE-RQ of 4 GB
    struct.pack(">BxI", 5, 0x7FFFFFFF),  # an A-RELEASE-RQ is 4 bytes, always
    struct.pack(">BxI", 0x0B, 10),  # unrecognized type: refused before its body
])
def test_declared_lengths_are_judged_before_any_byte_of_the_body(header: bytes) -> None:
    scp = Association.acceptor(max_associate_length=4096)
    with pytest.raises(RemoteProtocolError) as caught:
        scp.receive_data(header)
    assert scp.buffered == 0
    # Sta2 answers any bad PDU with AA-1: A-ABORT, service-user source, no reason.
    assert (caught.value.abort_source, caught.value.abort_reason) == (0, 0)


def test_a_pdata_packed_with_empty_pdvs_is_aborted() -> None:
    """Six-byte PDVs without a value are legal and useless: a peer streaming them made the
    acceptor spend 0.5 s of CPU per MiB. A few in a row pass, more than 64 are an abort."""
    _, scp = associated(max_pdu_length=65536)
    command = encode_command(COMMAND)
    few = pdata(*[pdv(1, 0x01, b"")] * 10, pdv(1, 0x03, command), *[pdv(1, 0x00, b"")] * 64,
                pdv(1, 0x02, DATASET))
    assert normalise(scp.receive_data(few)) == EXPECTED
    with pytest.raises(RemoteProtocolError) as caught:
        scp.receive_data(pdata(*[pdv(1, 0x01, b"")] * 65))
    assert caught.value.abort_source == 2
