"""Reading what a browser posts: URL-encoded forms, multipart uploads (the rule tester's
file), cookies. Standard library only (email's MIME parser for multipart)."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from router.service.http_types import Request


@dataclass(frozen=True)
class Posted:
    fields: dict[str, str]
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # name: (filename, data)


def parse_form(request: Request) -> Posted:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        return _multipart(ctype, request.body)
    values = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
    return Posted({k: v[-1] for k, v in values.items()})


def _multipart(ctype: str, body: bytes) -> Posted:
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if not message.is_multipart():
        return Posted(fields)
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True)
        payload = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, payload)
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return Posted(fields, files)


def cookie(request: Request, name: str) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(request.headers.get("cookie", ""))
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def set_cookie(name: str, value: str, *, secure: bool, max_age: int | None = None
               ) -> tuple[str, str]:
    """HttpOnly (no script reads it), SameSite=Strict (no other site sends it), Secure on
    HTTPS, scoped to the console."""
    parts = [f"{name}={value}", "Path=/console", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return ("Set-Cookie", "; ".join(parts))
