"""The operator API's request bodies as typed models: a value of the wrong type or a key
the API does not know is a 400 that names it, never a traceback, and never silently
ignored (a misspelt "ids" must not turn into "every dead letter")."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.service.http_types import Request

MAX_IDS = 10_000  # a screenful of dead letters and more; the body's 1 MiB bounds it anyway


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DrainBody(_Body):
    to: str = ""


class NoBody(_Body):
    """pause, resume, retry: nothing to say, so nothing is accepted."""


class LetterBody(_Body):
    """POST /api/dead-letters/<id>/replay|purge."""

    to: str | None = None


class BulkBody(_Body):
    """POST /api/dead-letters/replay|purge: ids, or filters, or "all": true."""

    ids: list[str] | None = Field(None, max_length=MAX_IDS)
    to: str | None = None
    destination: str | None = None
    reason: str | None = None
    older_than: str | None = None
    newer_than: str | None = None
    all: bool = False

    def filters(self) -> dict[str, str | None]:
        return {"destination": self.destination, "reason": self.reason,
                "older_than": self.older_than, "newer_than": self.newer_than}


Body = TypeVar("Body", bound=_Body)


def parse(model: type[Body], request: Request) -> Body:
    """The request's JSON body as `model`; ValueError naming the first bad key."""
    try:
        return model.model_validate(request.json())
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "the body"
        if error["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields) or "none"
            raise ValueError(f"unknown key {where!r} (known: {known})") from None
        raise ValueError(f"{where}: {error['msg']}") from None
