"""The `re:<regex>` patterns of a config: compiled once, with every refusal a config error,
and matched with a deadline so that a pattern cannot stall the process that matches it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from router.core.errors import PatternTooSlow

if TYPE_CHECKING:
    import regex

    from router.core.config import Rule

# Longest one search of a value may take. A rule's pattern runs in the acceptor's handler:
# catastrophic backtracking ("^(a|aa)+$", or ".*" between words of a 64 KB value) held it at
# full CPU for minutes. 50 ms is hundreds of times what an ordinary pattern needs on a
# header value, and bounds what a bad one costs each C-STORE. The whole value is searched
# (no prefix cut): a cut would change what `$` means, and the deadline already bounds time.
MATCH_TIMEOUT = 0.05

# What Python raises for a pattern it refuses, besides its error: a repeat count past its
# limit (a{4294967296}, OverflowError) and nesting past the recursion limit (RecursionError).
REFUSED = (re.error, OverflowError, RecursionError)

# A group that holds a quantifier and is itself repeated: "(\w+\s?)+", "(a|aa)*", "(x+)+".
_NESTED = re.compile(r"\((?:[^()\\]|\\.)*(?:[*+?]|\{\d+,?\d*\})(?:[^()\\]|\\.)*\)(?:[*+]|\{)")


def compile_pattern(text: str) -> regex.Pattern[str]:
    """`text` compiled, or ValueError saying why (pydantic turns it into a config error that
    names the key; anything else would be a traceback, or stop the router on a reload).
    Checked with `re` too: its syntax is the documented one."""
    import regex  # here: only a config with `re:` patterns pays its 2 MB in every process

    try:
        re.compile(text)
        return regex.compile(text)
    except RecursionError:
        raise ValueError("groups nested too deeply") from None
    except (*REFUSED, regex.error) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None


def search(pattern: regex.Pattern[str], value: str, rule: str) -> bool:
    """Whether `pattern` occurs in `value`; PatternTooSlow past MATCH_TIMEOUT, so that the
    instance is refused rather than routed as if the pattern had not matched."""
    try:
        return pattern.search(value, timeout=MATCH_TIMEOUT) is not None
    except TimeoutError:
        raise PatternTooSlow(rule) from None


def nested_quantifiers(rules: Iterable[Rule]) -> list[str]:
    """Patterns in `match` with a repeated group that itself repeats: the shape that
    backtracks catastrophically. `check-config` warns; matching them is bounded anyway."""
    notes: list[str] = []
    for rule in rules:
        m = rule.match
        fields = {"calling_ae": m.calling_ae, "called_ae": m.called_ae,
                  **{f"tags.{k}": v for k, v in m.tags.items()}}
        for key, expected in fields.items():
            for value in [expected] if isinstance(expected, str) else expected or []:
                if value.startswith("re:") and _NESTED.search(value[3:]):
                    notes.append(f"rule {rule.name!r}: match.{key} {value!r} repeats a group "
                                 f"that repeats inside: it can take exponential time on some "
                                 f"values; such a match is cut at {MATCH_TIMEOUT * 1000:g} ms "
                                 f"and the instance refused")
    return notes


def nested_morph_quantifiers(morphs: Iterable[tuple[str, Sequence[Any]]]) -> list[str]:
    """The same shape in the `replace` patterns of each (owner, morph actions): "rule 'x'"
    or "destination 'y'". Such a replace is cut at MATCH_TIMEOUT and the instance made a
    `morph` dead letter (workers/transforms/morph.py)."""
    notes: list[str] = []
    for owner, actions in morphs:
        for n, action in enumerate(actions):
            pattern = getattr(action, "pattern", None)
            if getattr(action, "action", "") == "replace" and _NESTED.search(pattern or ""):
                notes.append(f"{owner}: morph[{n}] replace pattern {pattern!r} repeats a group "
                             f"that repeats inside: it can take exponential time on some "
                             f"values; such a replace is cut at {MATCH_TIMEOUT * 1000:g} ms "
                             f"and the instance becomes a `morph` dead letter")
    return notes
