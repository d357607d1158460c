"""router/core/messages.py: versioned msgpack frames; decoding only ever raises ProtocolError."""

from __future__ import annotations

import pickle
from typing import Any

import msgpack
import pytest

from router.core.errors import ProtocolError
from router.core.messages import (
    RELAY_TYPES,
    SCHEMA_VERSION,
    Accepted,
    Deliver,
    Goodbye,
    Heartbeat,
    JobHeader,
    Message,
    Ready,
    Refused,
    RelayAck,
    RelayCancel,
    RelayProbe,
    RelayProgress,
    RelayRequest,
    RelayResponse,
    RelayStore,
    Result,
    Submit,
    decode,
    encode,
)

from .helpers import make_header

HEADER = make_header("0000018b2c3d4e5faabbccdd", ("pacs", "archive"), size=524_288)
TLS_HEADER = make_header("job-tls", ("pacs",), tls_subject="CN=scanner-1", rules=())

EVERY_MESSAGE: list[Message] = [
    Submit(HEADER),
    Submit(TLS_HEADER),
    Accepted("job-1"),
    Refused("job-1", "queue full (10 jobs)"),
    Ready(4),
    Ready(0),
    Deliver(HEADER, "archive", 3),
    Result("job-1", "pacs", True),
    Result("job-1", "pacs", False, "connection", True, "connection refused"),
    Heartbeat(),
    Goodbye(),
]


def pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def body_of(message: Message) -> dict[str, Any]:
    return msgpack.unpackb(encode(message), raw=False)


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    decoded = decode(encode(message))

    assert type(decoded) is type(message)
    assert decoded == message


def test_round_trip_keeps_header_tuples_and_types() -> None:
    decoded = decode(encode(Deliver(HEADER, "pacs", 2)))

    assert isinstance(decoded, Deliver)
    job = decoded.job
    assert isinstance(job, JobHeader)
    assert job.destinations == ("pacs", "archive")
    assert isinstance(job.destinations, tuple)
    assert isinstance(job.rules, tuple)
    assert job.received_at == HEADER.received_at
    assert job.tls_subject is None
    assert decoded.attempt == 2


def test_every_message_type_is_covered() -> None:
    kinds = {type(m).kind for m in EVERY_MESSAGE}

    assert kinds == {
        "submit", "accepted", "refused", "ready", "deliver", "result", "heartbeat", "goodbye"
    }


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_encode_is_a_versioned_msgpack_map(message: Message) -> None:
    body = body_of(message)

    assert isinstance(body, dict)
    assert body["v"] == SCHEMA_VERSION == 1
    assert body["type"] == type(message).kind


def test_job_header_is_a_plain_msgpack_map_never_pickled() -> None:
    frame = encode(Submit(HEADER))
    body = msgpack.unpackb(frame, raw=False)

    assert body["job"] == HEADER.to_dict()
    assert isinstance(body["job"], dict)
    assert body["job"]["destinations"] == ["pacs", "archive"]
    assert b"JobHeader" not in frame
    assert b"router.core.messages" not in frame
    assert not frame.startswith(b"\x80")  # the pickle protocol opcode


def test_decode_never_unpickles() -> None:
    frame = pickle.dumps(Submit(HEADER))

    with pytest.raises(ProtocolError):
        decode(frame)


def test_result_defaults_survive_a_round_trip_when_omitted() -> None:
    frame = pack({"v": 1, "type": "result", "job_id": "j", "destination": "pacs",
                  "delivered": True})

    assert decode(frame) == Result("j", "pacs", True, "", False, "")


def test_unknown_extra_fields_are_ignored() -> None:
    frame = pack({"v": 1, "type": "ready", "credits": 2, "future": "field"})

    assert decode(frame) == Ready(2)


# --- rejected frames ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x92\x01",  # array of two with one element
        b"\xdd\xff\xff\xff\xff",  # absurd array length
        pack({"v": 1, "type": "ready", "credits": 1}) + b"\x00",  # trailing bytes
        pack({1: "int key"}),
        b"\x91" * 5000,  # nesting too deep
    ],
    ids=["empty", "reserved-byte", "truncated", "huge-length", "extra-data", "int-key", "deep"],
)
def test_decode_rejects_non_msgpack(frame: bytes) -> None:
    with pytest.raises(ProtocolError, match="not msgpack"):
        decode(frame)


@pytest.mark.parametrize("body", [[1, "ready"], "ready", 7, None, b"bytes"])
def test_decode_rejects_a_non_map(body: Any) -> None:
    with pytest.raises(ProtocolError, match="not a msgpack map"):
        decode(pack(body))


@pytest.mark.parametrize("version", [0, 2, "1", None, 1.5])
def test_decode_rejects_a_wrong_schema_version(version: Any) -> None:
    with pytest.raises(ProtocolError, match="schema version"):
        decode(pack({"v": version, "type": "ready", "credits": 1}))


def test_decode_rejects_a_missing_schema_version() -> None:
    with pytest.raises(ProtocolError, match="schema version"):
        decode(pack({"type": "ready", "credits": 1}))


@pytest.mark.parametrize("kind", ["nope", "Ready", "", None, 3])
def test_decode_rejects_an_unknown_type(kind: Any) -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(pack({"v": 1, "type": kind}))


def test_decode_rejects_a_missing_type() -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(pack({"v": 1, "credits": 1}))


@pytest.mark.parametrize("kind", [["ready"], {"a": 1}], ids=["list", "map"])
def test_decode_rejects_an_unhashable_type(kind: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(pack({"v": 1, "type": kind}))


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (Submit(HEADER), "job"),
        (Accepted("j"), "job_id"),
        (Refused("j", "full"), "reason"),
        (Ready(1), "credits"),
        (Deliver(HEADER, "pacs", 1), "destination"),
        (Deliver(HEADER, "pacs", 1), "attempt"),
        (Result("j", "pacs", True), "delivered"),
        (Result("j", "pacs", True), "job_id"),
    ],
)
def test_decode_rejects_a_missing_required_field(message: Message, field: str) -> None:
    body = body_of(message)
    del body[field]

    with pytest.raises(ProtocolError, match=f"lacks field '{field}'"):
        decode(pack(body))


@pytest.mark.parametrize("field", ["job_id", "destinations", "size", "received_at"])
def test_decode_rejects_a_job_header_missing_a_field(field: str) -> None:
    body = body_of(Submit(HEADER))
    del body["job"][field]

    with pytest.raises(ProtocolError, match="job header"):
        decode(pack(body))


@pytest.mark.parametrize("job", [["not", "a", "map"], "job-1", 5, None])
def test_decode_rejects_a_job_that_is_not_a_map(job: Any) -> None:
    with pytest.raises(ProtocolError, match="job header is not a map"):
        decode(pack({"v": 1, "type": "deliver", "job": job, "destination": "d", "attempt": 1}))


def test_job_header_from_dict_rejects_bad_destinations() -> None:
    data = HEADER.to_dict()
    data["destinations"] = 5

    with pytest.raises(ProtocolError):
        JobHeader.from_dict(data)


def test_job_header_to_dict_from_dict_round_trip() -> None:
    assert JobHeader.from_dict(TLS_HEADER.to_dict()) == TLS_HEADER
    assert JobHeader.from_dict(HEADER.to_dict()) == HEADER


# --- relayed requests ----------------------------------------------------------------------------

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"

EVERY_RELAY_MESSAGE: list[Message] = [
    RelayRequest("1-a", "C-FIND", ["pacs", "backup"], "CT1", "DICOM-ROUTER", "10.1.2.3",
                 "1.2.840.10008.5.1.4.1.2.2.1", EXPLICIT, has_dataset=True),
    RelayRequest("1-b", "C-GET", ["pacs"], "WS1", "DICOM-ROUTER", "10.1.2.4",
                 "1.2.840.10008.5.1.4.1.2.2.3", EXPLICIT, priority=2,
                 storage_contexts=[[CT, [EXPLICIT, "1.2.840.10008.1.2"]]]),
    RelayRequest("1-c", "C-MOVE", ["pacs"], "WS1", "DICOM-ROUTER", "10.1.2.4",
                 "1.2.840.10008.5.1.4.1.2.2.2", EXPLICIT, move_destination="WS1",
                 move_message_id=7),
    RelayRequest("1-d", "N-GET", ["PACS"], "CT1", "DICOM-ROUTER", "10.1.2.3", CT, EXPLICIT,
                 sop_instance_uid="1.2.3.4", attribute_ids=[0x00100010, 0x00100020],
                 action_type_id=1, event_type_id=2, to_known_ae=True),
    RelayResponse("1-a", 0xFF00, False, has_dataset=True),
    RelayResponse("1-b", 0xB000, True, "pacs", "2 failed", remaining=0, completed=8,
                  failed=2, warning=0, sop_class_uid=CT, sop_instance_uid="1.2.3.4",
                  status_fields={"ErrorID": 3, "OffendingElement": [0x00100010]},
                  unanswered=True),
    RelayStore("1-b", "1-b.000001.dcm", CT, "1.2.3.4", EXPLICIT),
    RelayProgress("1-b"),
    RelayAck("1-b"),
    RelayCancel("1-a"),
    RelayProbe("1-a"),
    RelayProbe("1-b", "C-GET"),
]


@pytest.mark.parametrize("message", EVERY_RELAY_MESSAGE, ids=lambda m: type(m).__name__)
def test_relay_round_trip(message: Message) -> None:
    body = body_of(message)
    decoded = decode(encode(message))

    assert body["v"] == SCHEMA_VERSION and body["type"] == type(message).kind
    assert type(decoded) is type(message)
    assert decoded == message


def test_every_relay_message_type_is_covered() -> None:
    assert {type(m) for m in EVERY_RELAY_MESSAGE} == set(RELAY_TYPES)


def test_relay_defaults_survive_a_round_trip_when_omitted() -> None:
    """Fields with a default_factory (a list, a map) are optional like the others."""
    frame = pack({"v": 1, "type": "response", "request_id": "r", "status": 0, "final": True})
    request = body_of(EVERY_RELAY_MESSAGE[0])
    del request["attribute_ids"], request["storage_contexts"]

    assert decode(frame) == RelayResponse("r", 0, True)
    assert decode(pack({"v": 1, "type": "relay_probe", "request_id": "r"})) == RelayProbe("r")
    assert decode(pack(request)) == EVERY_RELAY_MESSAGE[0]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (EVERY_RELAY_MESSAGE[0], "request_id"),
        (EVERY_RELAY_MESSAGE[0], "upstreams"),
        (EVERY_RELAY_MESSAGE[0], "transfer_syntax_uid"),
        (RelayResponse("r", 0, True), "status"),
        (RelayResponse("r", 0, True), "final"),
        (RelayStore("r", "f.dcm", CT, "1.2.3", EXPLICIT), "file_name"),
        (RelayStore("r", "f.dcm", CT, "1.2.3", EXPLICIT), "sop_instance_uid"),
        (RelayProgress("r"), "request_id"),
        (RelayAck("r"), "request_id"),
        (RelayCancel("r"), "request_id"),
        (RelayProbe("r", "C-FIND"), "request_id"),
    ],
)
def test_decode_rejects_a_relay_message_missing_a_required_field(message: Message,
                                                                 field: str) -> None:
    body = body_of(message)
    del body[field]

    with pytest.raises(ProtocolError, match=f"{type(message).kind} message lacks field '{field}'"):
        decode(pack(body))
