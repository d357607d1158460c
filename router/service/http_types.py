"""A request and a response of the HTTP port's applications (the operator API, the console),
so that they are plain functions testable without a server (router/service/http_endpoint.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

# Bodies are JSON or forms (a bulk action's ids included); an app may allow more to some
# requests it has authenticated (`body_limit` below). Larger is refused (413) unread.
MAX_BODY = 1024**2


class BodyReader(Protocol):
    def read(self, size: int, /) -> bytes: ...


class LimitedBody:
    """The `length` bytes of a body still on the connection: read from it as it comes."""

    def __init__(self, source: BodyReader, length: int) -> None:
        self.source, self.left = source, length

    def read(self, size: int, /) -> bytes:
        data = self.source.read(min(size, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: str
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    client: str  # the peer's address
    # A body larger than MAX_BODY (one an app allowed through `body_limit`) is not read
    # into `body`: the app reads it from here, as it arrives.
    stream: BodyReader | None = None

    def params(self) -> dict[str, str]:
        """The query's parameters, the last value of each."""
        return {k: v[-1] for k, v in parse_qs(self.query).items()}

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); ValueError with a message otherwise."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise ValueError(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()
                  ) -> Response:
    return Response(status, json.dumps(data).encode(), "application/json", headers)


App = Callable[[Request], Response | None]  # None: not one of its paths


def body_limit(apps: list[App], head: Request) -> int:
    """The body a request may send, from its head (`body` empty): MAX_BODY, or more where an
    app says so with a `body_limit(head) -> int | None` method (the console's rule tester)."""
    limits = [MAX_BODY]
    for app in apps:
        limit_of = getattr(app, "body_limit", None)
        limit = limit_of(head) if callable(limit_of) else None
        if isinstance(limit, int):
            limits.append(limit)
    return max(limits)


def head_answer(apps: list[App], head: Request) -> Response | None:
    """The final answer an app gives a request from its head alone (`body` empty), through a
    `head_answer(head) -> Response | None` method: the operator API's 403 without a token.
    Asked only of a request that waits for `100 Continue`, so that a body it would refuse
    is never sent (RFC 9110 section 10.1.1)."""
    for app in apps:
        answer_of = getattr(app, "head_answer", None)
        answer = answer_of(head) if callable(answer_of) else None
        if isinstance(answer, Response):
            return answer
    return None
