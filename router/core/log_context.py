"""Which association and which job a log record is about, for structured (JSON) logs.

Handlers set these context variables on their own thread while they work on an association
or a job; every record logged meanwhile carries them as `association` and `job` fields. The
text format leaves them out (its messages name the job where it matters).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

ASSOCIATION: ContextVar[str | None] = ContextVar("association", default=None)
JOB: ContextVar[str | None] = ContextVar("job", default=None)


@contextlib.contextmanager
def working_on(*, association: str | None = None, job: str | None = None) -> Iterator[None]:
    """Records logged inside carry these ids; a job id set inside (JOB.set) is undone too."""
    association_token = ASSOCIATION.set(association) if association is not None else None
    job_token = JOB.set(job)
    try:
        yield
    finally:
        JOB.reset(job_token)
        if association_token is not None:
            ASSOCIATION.reset(association_token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.association = ASSOCIATION.get()
        record.job = JOB.get()
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time, level, process, logger, message, association, job."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s %(association)s %(job)s",
        rename_fields={"asctime": "time", "levelname": "level", "processName": "process",
                       "name": "logger"},
        timestamp=False,
    )
