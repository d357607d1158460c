"""DICOMweb destination: STOW-RS the spooled Part 10 file as is, one instance per request.

dicomweb-client's ``store_instances`` only takes pydicom Datasets, writes each again with
``dcmwrite`` and holds the whole multipart message in memory. The router sends what it
received, unchanged and never decoded (as the DICOM destination does), so this module builds
the ``multipart/related; type="application/dicom"`` request itself and streams it from the
spooled file with a Content-Length, over the requests Session it gave the DICOMwebClient.
The client checks the URL and owns the session (with its retries off: the broker retries);
nothing here parses the instance: the UIDs come from the job header.

How answers become results (PS3.18 10.5.3; judged in stow_answer.py):

| answer | result |
| --- | --- |
| refused, reset, timed out; no whole answer in `timeout` + 1 s per MB | `connection`, transient |
| an answer longer than `max_answer_bytes` (16 MiB), or endless | `answer_too_large`, pauses |
| TLS failure (certificate not trusted, handshake) | `tls`, transient (pauses) |
| 502, 503, 504, 429: the service (or its proxy) is down or throttles | `unavailable`, pauses |
| 401, 403: its credentials are refused | `auth`, pauses: "credentials refused (check ...)" |
| 3xx: its url redirects | `redirect`, pauses: "the url redirects (set the final URL)" |
| 408, 500 and other 5xx | `status`, transient |
| 409 and other 4xx | `status`, permanent, with the FailureReason when listed |
| 2xx listing the instance in FailedSOPSequence | `status`, transient for 0xA7xx, 0x0110, ... |
| 2xx listing it in ReferencedSOPSequence (with or without WarningReason), or no body | delivered |

Answers in the first six rows speak of the service, not of the instance: the destination
pauses (its queue kept, no attempt spent) until an operator or the service mends it, probing
with its retry backoff, never sooner than a Retry-After in seconds asks.

A password or token is read from its environment variable or file at each request (a rotated
token is picked up); one that cannot be read (a file missing or not readable, a variable
unset) is the site's credentials, not the instance: `auth`, like a 401, and the destination
pauses until an operator fixes it, nothing turned into a dead letter meanwhile.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

import requests
from dicomweb_client import DICOMwebClient
from requests.auth import AuthBase, HTTPBasicAuth

from router.core.errors import DeliveryError
from router.core.messages import JobHeader
from router.core.tls import failure_reason
from workers.destinations.http_deadline import Deadline, DeadlineAdapter
from workers.destinations.stow_answer import classify, parse_answer

log = logging.getLogger(__name__)

_READ_BLOCK = 1 << 20
_ANSWER_BLOCK = 64 * 1024
UPLOAD_BYTES_PER_SECOND = 1_000_000  # the slowest upload a deadline allows for
_POOL_PREFIX = re.compile(r"^HTTPS?Connection(Pool)?\([^)]*\): ")


class DicomWebSettings(Protocol):
    """What the destination reads from its config (router.dicomweb_spec.DicomWebFields)."""

    @property
    def url(self) -> str: ...
    @property
    def auth(self) -> Literal["none", "basic", "bearer"]: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password_env(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def token_env(self) -> str | None: ...
    @property
    def token_file(self) -> Path | None: ...
    @property
    def ca(self) -> Path | None: ...
    @property
    def verify_tls(self) -> bool: ...
    @property
    def timeout(self) -> float: ...
    @property
    def max_answer_bytes(self) -> int: ...


# --- the request body --------------------------------------------------------------------------


class MultipartBody:
    """One ``application/dicom`` part in a multipart/related body, read from an open file.

    requests sends it with a Content-Length (``__len__``) and reads it in blocks (``read``):
    the file is never held in memory whole.
    """

    def __init__(self, fp: BinaryIO, size: int, boundary: str) -> None:
        self._head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        self._tail = f"\r\n--{boundary}--\r\n".encode("ascii")
        self._length = len(self._head) + size + len(self._tail)
        self._chunks = self._generate(fp)
        self._pending = b""

    def _generate(self, fp: BinaryIO) -> Iterator[bytes]:
        yield self._head
        while block := fp.read(_READ_BLOCK):
            yield block
        yield self._tail

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            out, self._pending = self._pending + b"".join(self._chunks), b""
            return out
        while len(self._pending) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._pending += chunk
        out, self._pending = self._pending[:size], self._pending[size:]
        return out


# --- credentials -------------------------------------------------------------------------------


def read_secret(env: str | None, file: Path | None, what: str) -> str:
    """The secret from its environment variable or file; a transient `auth` DeliveryError
    (the destination pauses) when there is none."""
    if env is not None:
        value = os.environ.get(env, "")
        where = f"environment variable {env}"
    else:
        assert file is not None, "the config guarantees one source"
        where = f"file {file}"
        try:
            value = file.read_text(encoding="utf-8").strip("\r\n")
        except OSError as exc:
            raise DeliveryError("auth", f"cannot read the {what} from {where}: "
                                f"{exc.strerror or exc}", transient=True) from exc
        except UnicodeDecodeError as exc:
            raise DeliveryError("auth", f"cannot read the {what} from {where}: not UTF-8 text",
                                transient=True) from exc
    if not value:
        raise DeliveryError("auth", f"no {what}: {where} is unset or empty", transient=True)
    return value


class SecretAuth(AuthBase):
    """Basic or bearer credentials, read from their source when each request is prepared."""

    def __init__(self, config: DicomWebSettings) -> None:
        self.config = config

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        c = self.config
        if c.auth == "basic":
            password = read_secret(c.password_env, c.password_file, "password")
            return HTTPBasicAuth(c.username or "", password)(request)
        token = read_secret(c.token_env, c.token_file, "bearer token")
        request.headers["Authorization"] = f"Bearer {token}"
        return request


def credential_hint(config: DicomWebSettings) -> str:
    if config.auth == "basic":
        source = "password_env" if config.password_env else "password_file"
        return f"check username/{source}"
    if config.auth == "bearer":
        return f"check {'token_env' if config.token_env else 'token_file'}"
    return "the service wants credentials: set auth to basic or bearer"


# --- the destination ---------------------------------------------------------------------------


def exchange_seconds(timeout: float, size: int) -> float:
    """The deadline of one STOW-RS exchange: `timeout`, plus one second per MB of the
    instance for its upload (at least 8 Mbit/s). `timeout` alone cut off every upload longer
    than it: a 4 GB instance needs 67 MB/s to go in 60 s, and a slower link never delivered
    it, pausing the destination for ever."""
    return timeout + size / UPLOAD_BYTES_PER_SECOND


class DicomWebDestination:
    """One per delivery thread: the Session (and its pooled connections) is not shared."""

    def __init__(self, name: str, config: DicomWebSettings) -> None:
        self.name = name
        self.config = config
        self.session = requests.Session()
        if config.auth != "none":
            self.session.auth = SecretAuth(config)
        self.client = DICOMwebClient(config.url, session=self.session, timeout=config.timeout)
        self.client.set_http_retry_params(retry=False)  # the broker retries, with backoff
        adapter = DeadlineAdapter()  # `timeout` bounds the whole exchange, not each read
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.stow_url = f"{config.url.rstrip('/')}/studies"
        self.verify: bool | str = str(config.ca) if config.ca else config.verify_tls
        self.hint = credential_hint(config)
        if config.url.startswith("https:") and not config.verify_tls:
            log.warning("%s: verify_tls is false: the server's certificate is not checked",
                        name)

    def deliver(self, job: JobHeader, source: Path) -> None:
        with source.open("rb") as fp:  # FileNotFoundError: withdrawn, the caller knows
            response, content = self._post(fp, os.fstat(fp.fileno()).st_size)
        answer = parse_answer(content)
        failure = classify(self.name, response.status_code, answer, job.sop_instance_uid,
                           self.hint, response.headers)
        if failure is not None:
            raise failure
        warning = answer.referenced.get(job.sop_instance_uid)
        if warning is not None or response.status_code == 202:
            log.info("%s stored %s with WarningReason %s", self.name, job.sop_instance_uid,
                     "none" if warning is None else f"0x{warning:04X}")

    def _post(self, fp: BinaryIO, size: int) -> tuple[requests.Response, bytes]:
        """The response and its body, read whole within the deadline and the size cap."""
        boundary = uuid.uuid4().hex
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            # A STOW answer is small: compressed, it only serves to expand past max_answer_bytes.
            "Accept-Encoding": "identity",
        }
        timeout = self.config.timeout
        seconds = exchange_seconds(timeout, size)
        try:
            with Deadline(seconds) as deadline:  # the body is read inside it too
                # Each read may wait the whole deadline: the end of the upload still in the
                # socket's buffers goes at the link's rate before the server can answer.
                response = self.session.post(
                    self.stow_url, data=MultipartBody(fp, size, boundary), headers=headers,
                    timeout=(timeout, seconds), verify=self.verify, allow_redirects=False,
                    stream=True,
                )
                with response:  # closes the connection when the body is not read to its end
                    content = self._read_answer(response)
        except requests.RequestException as exc:
            if deadline.expired:
                raise self._late(size) from exc
            raise self._failed(exc) from exc
        if deadline.expired:  # an answer without a length ends when the timer shuts it
            raise self._late(size)
        return response, content

    def _read_answer(self, response: requests.Response) -> bytes:
        """The body, or DeliveryError past max_answer_bytes: never more than that in memory."""
        cap = self.config.max_answer_bytes
        declared = response.headers.get("Content-Length", "").strip()
        body = bytearray()
        if not declared.isdigit() or int(declared) <= cap:
            for block in response.iter_content(_ANSWER_BLOCK):
                body += block
                if len(body) > cap:
                    break
        if len(body) > cap or (declared.isdigit() and int(declared) > cap):
            raise DeliveryError("answer_too_large", f"{self.name} ({self.stow_url}) answered "
                                f"HTTP {response.status_code} with more than max_answer_bytes "
                                f"({cap} bytes): not a STOW-RS answer (is url the DICOMweb "
                                "service?); the answer was cut off", transient=True)
        return bytes(body)

    def _late(self, size: int) -> DeliveryError:
        return DeliveryError("connection", f"{self.name} ({self.stow_url}) did not take the "
                             f"instance and answer within its timeout of "
                             f"{self.config.timeout:g} s plus 1 s per MB of the instance "
                             f"({exchange_seconds(self.config.timeout, size):.0f} s for "
                             f"the whole request and response)", transient=True)

    def _failed(self, exc: requests.RequestException) -> DeliveryError:
        if isinstance(exc, requests.exceptions.SSLError):
            return DeliveryError("tls", f"TLS with {self.name} ({self.stow_url}) failed: "
                                 f"{_tls_reason(exc)} ({_cause(exc)})", transient=True)
        return DeliveryError("connection", f"cannot send to {self.name} ({self.stow_url}): "
                             f"{_cause(exc)}", transient=True)

    def close(self) -> None:
        self.session.close()


def _tls_reason(exc: BaseException) -> str:
    """router.core.tls's label for the ssl.SSLError inside requests' and urllib3's wrappers."""
    pending: list[BaseException] = [exc]
    for _ in range(16):  # a few wrappers deep; never loops on a cycle
        if not pending:
            break
        error = pending.pop()
        if isinstance(error, ssl.SSLError):
            return failure_reason(error)
        pending += [e for e in (*error.args, getattr(error, "reason", None), error.__cause__)
                    if isinstance(e, BaseException) and e is not error]
    return "handshake_failed"


def _cause(exc: requests.RequestException) -> str:
    """The useful end of a requests error ("Failed to establish a new connection: ...")."""
    reason = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", None) or reason  # urllib3's MaxRetryError wraps it
    text = _POOL_PREFIX.sub("", str(reason))
    return text or type(exc).__name__
