"""What a peer sends must not write the router's log: escaping, bounds and rate limits.

A peer controls AE titles, UIDs, comments and the text of the exceptions pynetdicom raises
on its PDUs. Without care a UID holding a newline forges a whole log line, control bytes
reach the terminal, and a fuzzer fills the disk with tracebacks. Every record of every
router process goes through `SafeLogFilter` (installed by process_util.setup_logging):

- the message is rendered once, control characters (newlines included) escaped as \\xNN
  and cut at MAX_MESSAGE characters;
- pynetdicom's own records lose their traceback (its reactor logs one for each PDU it
  cannot decode: the exception's type is kept) and its messages that quote a UID or AE
  title value lose the value; pydicom's records and Python warnings (its "Invalid value
  for VR UI: '...'" reaches both) lose every quoted value: they quote the patient's data;
- a message repeated too often is suppressed, counted in
  `dicom_router_log_suppressed_total{what="log"}`, and the next one that passes says how
  many were dropped.

Uncaught exceptions in threads (pynetdicom's reactor raises InvalidEventError there) go
through `thread_excepthook`: one escaped line, rate-limited like the rest.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

MAX_MESSAGE = 2000  # characters of one message; a fuzzer once wrote a 65 KB line
MAX_EXCEPTION = 8000  # characters of a traceback (router code's own)
WINDOW_SECONDS = 60.0
SAME_MESSAGE_BUDGET = 5  # identical messages per window
SAME_TEMPLATE_BUDGET = 50  # messages from one format string per window
SAME_LOGGER_BUDGET = 300  # warnings and errors from one logger per window
AUDIT_REPEAT_BUDGET = 5  # audit records of the same failure from one peer per window
MAX_KEYS = 10_000  # distinct messages remembered per window
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# pynetdicom quotes the offending value: "Invalid 'Calling AE Title' value '...'".
_QUOTED_VALUE = re.compile(r"^((?:Non-conformant|Invalid) '[^']*' value) '.*?'( - |$)", re.S)


# Any quoted text: what pydicom and Python quote in their messages is a dataset's value.
_ANY_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
NOT_SHOWN = "(value not logged)"
# Loggers whose messages quote dataset values (py.warnings: logging.captureWarnings).
_QUOTING_LOGGERS = ("pydicom", "py.warnings")


def without_values(text: str) -> str:
    """`text` with every quoted value replaced: for messages that pydicom or Python wrote
    about a dataset (a patient's name, birth date or UID), before a log or a dead letter."""
    return _ANY_QUOTED.sub(NOT_SHOWN, text)


def escape(text: str, limit: int = MAX_MESSAGE) -> str:
    """Control characters as \\xNN (a newline too), at most `limit` characters."""
    safe = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(safe) > limit:
        safe = f"{safe[:limit]}... ({len(safe) - limit} more characters)"
    return safe


def _count_suppressed(what: str) -> None:
    try:
        from router.core import metrics  # late: needs PROMETHEUS_MULTIPROC_DIR first
    except Exception:
        return
    metrics.LOG_SUPPRESSED.labels(what).inc()


class RepeatLimiter:
    """Counts events by key over a fixed window: `allow(key, budget)` is False past the
    budget. `suppressed(key)` says how many were refused since the key last passed."""

    def __init__(self, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 on_suppressed: Callable[[str], None] = _count_suppressed,
                 what: str = "log") -> None:
        self.window, self.clock = window, clock
        self.on_suppressed, self.what = on_suppressed, what
        self._seen: dict[Any, int] = {}
        self._dropped: dict[Any, int] = {}
        self._started = clock()
        self._lock = threading.Lock()

    def allow(self, key: Any, budget: int) -> bool:
        with self._lock:
            if self.clock() - self._started >= self.window:
                self._seen.clear()  # bounded memory: every key is forgotten each window
                self._started = self.clock()
            if key in self._seen or len(self._seen) < MAX_KEYS:
                seen = self._seen.get(key, 0) + 1
                self._seen[key] = seen
                if seen <= budget:
                    return True
            # Past its budget, or a new key once a flood of distinct messages filled the
            # table: dropped (and not remembered, so memory stays bounded).
            self._dropped[key] = self._dropped.get(key, 0) + 1
            if len(self._dropped) > MAX_KEYS:
                self._dropped.clear()
        self.on_suppressed(self.what)
        return False

    def suppressed(self, key: Any) -> int:
        with self._lock:
            return self._dropped.pop(key, 0)


class SafeLogFilter(logging.Filter):
    """Escapes, bounds and rate-limits every record (see the module docstring)."""

    def __init__(self, limiter: RepeatLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter or RepeatLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_router_safe", False):
            return True  # already rendered (a record may pass several handlers)
        template = str(record.msg)[:200]
        try:
            message = record.getMessage()
        except Exception:
            message = f"{record.msg!r} {record.args!r}"
        if record.name.startswith("pynetdicom"):
            message = _quoted_value.sub(r"\1 (value not logged)\2", message)
            if record.exc_info and record.exc_info[1] is not None:
                # The type only: pynetdicom's exception texts quote the peer's values.
                message = f"{message} ({type(record.exc_info[1]).__name__})"
                record.exc_info, record.exc_text = None, None
        elif record.name.startswith(_QUOTING_LOGGERS):
            message = without_values(message)
        record.msg, record.args = escape(message), None
        record._router_safe = True
        return record.levelno < logging.WARNING or self._within_budget(record, template)

    def _within_budget(self, record: logging.LogRecord, template: str) -> bool:
        template_key = (record.name, template)
        exact_key = (record.name, record.msg)
        if not (self.limiter.allow(exact_key, SAME_MESSAGE_BUDGET)
                and self.limiter.allow(template_key, SAME_TEMPLATE_BUDGET)
                and self.limiter.allow(record.name, SAME_LOGGER_BUDGET)):
            return False
        dropped = sum(self.limiter.suppressed(key)
                      for key in (exact_key, template_key, record.name))
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar messages were suppressed]"
        return True


_quoted_value = _QUOTED_VALUE


class SafeFormatter(logging.Formatter):
    """The text format, with tracebacks escaped and indented: no line of one can pass for a
    log line of its own, whatever the exception's message holds."""

    def formatException(self, ei: Any) -> str:
        text = escape_block(super().formatException(ei), MAX_EXCEPTION)
        return "\n".join(f"    {line}" for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(f"    {line}" for line in escape_block(stack_info).splitlines())


def escape_block(text: str, limit: int = MAX_EXCEPTION) -> str:
    """As escape(), keeping the newlines of a multi-line block."""
    return "\n".join(escape(line, limit) for line in text[:limit].splitlines())


def thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """An uncaught exception in a thread: one escaped line instead of a traceback on stderr.

    pynetdicom's reactor threads raise on sequences of PDUs its state machine does not
    expect (InvalidEventError): a fuzzer made 1,392 such tracebacks. The router's own
    threads keep their traceback, in the log where it can be rate-limited.
    """
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logger = logging.getLogger("pynetdicom" if _from_pynetdicom(args.exc_traceback)
                               else "router.threads")
    if logger.name == "pynetdicom":
        logger.error("uncaught %s in thread %s: %s", args.exc_type.__name__, name,
                     args.exc_value)
    elif args.exc_value is not None:
        logger.error("uncaught exception in thread %s", name,
                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _from_pynetdicom(tb: Any) -> bool:
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and "pynetdicom" in last.tb_frame.f_code.co_filename


def install_thread_hook() -> None:
    threading.excepthook = thread_excepthook
