"""The `re:<regex>` patterns of a config: compiled once, with every refusal a config error."""

from __future__ import annotations

import re

# What Python raises for a pattern it refuses, besides re.error: a repeat count past its
# limit (a{4294967296}, OverflowError) and nesting past the recursion limit (RecursionError).
REFUSED = (re.error, OverflowError, RecursionError)


def compile_pattern(text: str) -> re.Pattern[str]:
    """`text` compiled, or ValueError saying why (pydantic turns it into a config error that
    names the key; anything else would be a traceback, or stop the router on a reload)."""
    try:
        return re.compile(text)
    except RecursionError:
        raise ValueError("groups nested too deeply") from None
    except REFUSED as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
