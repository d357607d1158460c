"""Reading what a browser posts: URL-encoded forms, multipart uploads (the rule tester's
file), cookies. Standard library only. A multipart body is read in small blocks and its
files go to a temporary folder: memory stays a block or two, whatever the upload's size."""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs

from router.service.http_types import MAX_BODY, BodyReader, Request

BLOCK = 64 * 1024  # read from the client at a time
FIELD_MAX = 64 * 1024  # a form field's value (CSRF token, AE titles, address)
PART_HEAD_MAX = 16 * 1024  # a part's headers
_PARAM = re.compile(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class FormError(ValueError):
    """A body the console cannot read: the status to answer with and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Posted:
    fields: dict[str, str]
    files: dict[str, tuple[str, Path]] = field(default_factory=dict)  # name: (filename, file)
    folder: tempfile.TemporaryDirectory[str] | None = None  # the files', removed by close()

    def close(self) -> None:
        if self.folder is not None:
            self.folder.cleanup()

    def __enter__(self) -> Posted:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def parse_form(request: Request) -> Posted:
    """The posted form; FormError when it cannot be read. Use it as a context manager: its
    uploaded files are removed on exit."""
    source: BodyReader = request.stream or io.BytesIO(request.body)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        return _multipart(_boundary(ctype), source)
    text = source.read(MAX_BODY + 1)
    if len(text) > MAX_BODY:
        raise FormError(413, f"form too large: at most {MAX_BODY} bytes unless it uploads "
                             "a file (multipart/form-data)")
    values = parse_qs(text.decode("utf-8", "replace"), keep_blank_values=True)
    return Posted({k: v[-1] for k, v in values.items()})


def _params(header: str) -> dict[str, str]:
    """A header's parameters (`; name="value"`), names in lower case, quotes removed."""
    found: dict[str, str] = {}
    for name, value in _PARAM.findall(header):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found.setdefault(name.lower(), value)
    return found


def _boundary(ctype: str) -> bytes:
    boundary = _params(ctype).get("boundary", "")
    if not 0 < len(boundary) <= 70 or not boundary.isascii():  # RFC 2046 section 5.1.1
        raise FormError(400, "multipart/form-data without a valid boundary")
    return boundary.encode()


class _Scanner:
    """Splits a body read in blocks at separators, on bytes, without holding it."""

    def __init__(self, source: BodyReader) -> None:
        self.source, self.buffer, self.ended = source, b"", False

    def _more(self) -> None:
        block = self.source.read(BLOCK)
        self.ended = not block
        self.buffer += block

    def peek(self, size: int) -> bytes:
        while len(self.buffer) < size and not self.ended:
            self._more()
        return self.buffer[:size]

    def until(self, separator: bytes, sink: Callable[[bytes], object]) -> bool:
        """Gives `sink` what comes before `separator` and reads past it; False when the
        body ends first."""
        keep = len(separator) - 1  # a separator may straddle two blocks
        while True:
            at = self.buffer.find(separator)
            if at >= 0:
                sink(self.buffer[:at])
                self.buffer = self.buffer[at + len(separator):]
                return True
            if len(self.buffer) > keep:
                sink(self.buffer[:len(self.buffer) - keep])
                self.buffer = self.buffer[len(self.buffer) - keep:]
            if self.ended:
                return False
            self._more()


class _Bounded:
    """Collects bytes in memory up to a limit (a field, a part's headers)."""

    def __init__(self, limit: int, what: str) -> None:
        self.data, self.limit, self.what = bytearray(), limit, what

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            raise FormError(413, f"{self.what} too long: at most {self.limit} bytes")


def _multipart(boundary: bytes, source: BodyReader) -> Posted:
    scanner = _Scanner(source)
    delimiter = b"--" + boundary
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, Path]] = {}
    folder: tempfile.TemporaryDirectory[str] | None = None
    try:
        if not scanner.until(delimiter, lambda _: None):  # the preamble, ignored
            raise FormError(400, "the multipart body does not hold its boundary")
        while scanner.peek(2) == b"\r\n":
            # The CRLF after the delimiter starts the head: an empty head ends at once.
            head = _Bounded(PART_HEAD_MAX, "a part's headers")
            if not scanner.until(b"\r\n\r\n", head):
                raise FormError(400, "the multipart body ends inside a part's headers")
            name, filename = _disposition(bytes(head.data))
            end = b"\r\n" + delimiter
            if filename is None:
                value = _Bounded(FIELD_MAX, "a form field")
                complete = scanner.until(end, value)
                if name is not None:
                    fields[name] = value.data.decode("utf-8", "replace")
            else:
                folder = folder or tempfile.TemporaryDirectory(prefix="console-upload-")
                path = Path(folder.name) / f"upload-{len(files)}"  # never the client's name
                with open(path, "wb") as out:
                    complete = scanner.until(end, out.write)
                if name is not None:
                    files[name] = (filename, path)
            if not complete:
                raise FormError(400, "the multipart body ends before its closing boundary")
        if scanner.peek(2) != b"--":
            raise FormError(400, "the multipart body ends before its closing boundary")
    except BaseException:
        if folder is not None:
            folder.cleanup()
        raise
    return Posted(fields, files, folder)


def _disposition(head: bytes) -> tuple[str | None, str | None]:
    """The form field's name and the file's name (None: not a file) of a part's head."""
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            params = _params(value)
            return params.get("name"), params.get("filename")
    return None, None


def cookie(request: Request, name: str) -> str | None:
    """Our cookie's value, the first one of that name. Read by hand: SimpleCookie gives up on
    the whole header at another site's cookie it dislikes (a space in a value, no name), and
    every user was then logged out."""
    for pair in request.headers.get("cookie", "").split(";"):
        key, equals, value = pair.partition("=")
        if equals and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


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
