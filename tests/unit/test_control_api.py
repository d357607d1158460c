"""router/service/control_api.py over a tmp_path spool: bodies are typed, bulk actions never
take "everything" by accident, and a bulk replay is checked whole before it starts and says
exactly what it did when it stops midway."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import pytest

from router.core.config import parse_config
from router.core.messages import ControlReply
from router.core.spool import Spool
from router.service import control_api, dead_letters
from router.service.control_api import ControlApi
from router.service.http_types import Request

from .test_dead_letters import JOB_A, JOB_B, JOB_C, dead_letter

Audited = list[dict[str, Any]]


@pytest.fixture
def audited(monkeypatch: pytest.MonkeyPatch) -> Audited:
    calls: Audited = []
    monkeypatch.setattr(control_api, "record_action",
                        lambda audit, **kwargs: calls.append(kwargs))
    return calls


@pytest.fixture
def api(tmp_path: Path, audited: Audited) -> ControlApi:
    config = parse_config({
        "spool": {"path": str(tmp_path / "spool")},
        "destinations": {n: {"type": "folder", "path": str(tmp_path / n)}
                         for n in ("pacs", "folder")},
        "rules": [{"name": "all", "forward": ["pacs"]}]})
    api = ControlApi(lambda: config, cast(Any, None), lambda: {}, None)
    api.spool.create()
    for job in (JOB_A, JOB_B, JOB_C):
        dead_letter(api.spool, job, "pacs", age=3600)
    return api


def post(api: ControlApi, path: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = api(Request("POST", path, "", {"content-type": "application/json"}, data,
                         "127.0.0.1"))
    assert answer is not None
    return answer.status, json.loads(answer.body)


def left(spool: Spool) -> set[str]:
    return {d.id for d in dead_letters.find(spool, dead_letters.Filter(None, None, None, None))}


@pytest.mark.parametrize("body", [b"", b"{}", {"ids": []}, {"id": ["x"]}])
def test_an_empty_bulk_body_is_never_everything(api: ControlApi, body: Any) -> None:
    for action in ("replay", "purge"):
        code, answer = post(api, f"/api/dead-letters/{action}", body)
        assert code == 400, answer
        assert len(left(api.spool)) == 3


def test_all_is_said_explicitly(api: ControlApi) -> None:
    code, answer = post(api, "/api/dead-letters/replay", {"all": True})
    assert code == 200 and answer["count"] == 3 and not left(api.spool)


@pytest.mark.parametrize("body", [{"to": ["x"]}, {"to": {"a": 1}}, {"ids": "abc"},
                                  {"ids": [1]}, {"older_than": 5}, {"all": "yes"}])
def test_bodies_are_typed(api: ControlApi, body: dict[str, Any]) -> None:
    code, answer = post(api, "/api/dead-letters/replay", body)
    assert code == 400 and next(iter(body)) in answer["error"], answer
    assert len(left(api.spool)) == 3


def test_a_bad_age_is_quoted_whole(api: ControlApi) -> None:
    code, answer = post(api, "/api/dead-letters/replay", {"older_than": "5"})
    assert code == 400 and answer["error"].startswith("'5' is not an age"), answer


def test_drain_needs_a_string(api: ControlApi) -> None:
    code, answer = post(api, "/api/destinations/pacs/drain", {"to": ["x"]})
    assert code == 400 and "to" in answer["error"]


def test_a_bulk_replay_is_checked_whole_first(api: ControlApi, audited: Audited) -> None:
    a, b = f"{JOB_A}.pacs", f"{JOB_B}.pacs"
    code, answer = post(api, "/api/dead-letters/replay", {"ids": [a, b, a], "to": "folder"})
    assert code == 400 and "named twice" in answer["error"]
    code, answer = post(api, "/api/dead-letters/replay", {"ids": [a, "feedface99"]})
    assert code == 400 and "no dead letter" in answer["error"]
    assert len(left(api.spool)) == 3 and not any(c["ok"] for c in audited)


def test_a_replay_that_stops_midway_says_what_it_did(api: ControlApi, audited: Audited,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = f"{JOB_A}.pacs", f"{JOB_B}.pacs", f"{JOB_C}.pacs"
    real = dead_letters.replay

    def failing(spool: Spool, letter: dead_letters.DeadLetter, to: str | None = None,
                siblings: dead_letters.Siblings | None = None) -> Any:
        if letter.id == b:
            raise OSError(28, "No space left on device")
        return real(spool, letter, to, siblings)

    monkeypatch.setattr(dead_letters, "replay", failing)
    code, answer = post(api, "/api/dead-letters/replay", {"ids": [a, b, c], "to": "folder"})
    assert code == 500 and not answer["ok"]
    assert [d["id"] for d in answer["dead_letters"]] == [a]
    assert answer["not_done"] == [b, c]
    assert left(api.spool) == {b, c}
    record = audited[-1]
    assert not record["ok"] and f"done 1: {a}" in record["detail"]
    assert f"not done 2: {b}, {c}" in record["detail"]


@pytest.mark.parametrize(("headers", "refused"), [
    ({}, None),
    ({"host": "127.0.0.1:9100"}, None),
    ({"host": "localhost:9100", "origin": "http://localhost:9100"}, None),
    ({"host": "[::1]:9100"}, None),
    ({"host": "evil.example:9100"}, "is not this machine"),
    ({"host": "127.0.0.1:9100", "origin": "http://evil.example:9100"}, "web page"),
    ({"host": "127.0.0.1:9100", "origin": "null"}, "web page"),
])
def test_loopback_trust_refuses_dns_rebinding(api: ControlApi, headers: dict[str, str],
                                              refused: str | None) -> None:
    """Without a token the API trusts loopback clients; a browser page whose name resolves
    to 127.0.0.1 is one, and only its Host and Origin headers give it away."""
    answer = api(Request("GET", "/api/destinations", "", headers, b"", "127.0.0.1"))
    assert answer is not None
    if refused is None:
        assert answer.status == 200
    else:
        assert answer.status == 403 and refused in json.loads(answer.body)["error"]


def _rows(api: ControlApi, rows: dict[str, Any]) -> dict[str, Any]:
    api.destinations = lambda: rows
    answer = api(Request("GET", "/api/destinations", "", {}, b"", "127.0.0.1"))
    assert answer is not None and answer.status == 200
    return dict(json.loads(answer.body))


def test_destination_rows_say_when_they_are_a_hung_brokers_last_report(
        api: ControlApi) -> None:
    now = time.time()
    fresh = _rows(api, {"pacs": {"depth": 1, "up": True, "updated": now}})
    assert fresh["stale"] is False and fresh["updated"] == now
    old = _rows(api, {"pacs": {"depth": 1, "up": True, "updated": now - 60}})
    assert old["stale"] is True and old["updated"] == now - 60
    assert old["destinations"]["pacs"]["depth"] == 1
    never = _rows(api, {})  # no report at all: nothing current either
    assert never["stale"] is True and never["updated"] is None


class Replying:
    """ControlClient stand-in: the broker's reply as given."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def request(self, *args: object) -> Any:
        return self.reply


@pytest.mark.parametrize(("server_error", "code"), [(True, 503), (False, 400)])
def test_a_spool_failure_is_a_server_error_and_a_refusal_a_bad_request(
    api: ControlApi, server_error: bool, code: int
) -> None:
    api.client = cast(Any, Replying(ControlReply("r1", False, "cannot write to the spool",
                                                 {"moved": 2}, server_error=server_error)))
    status, answer = post(api, "/api/destinations/pacs/drain", {"to": "folder"})
    assert status == code, answer
    assert answer["error"] == "cannot write to the spool" and answer["moved"] == 2
