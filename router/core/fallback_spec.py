"""Checks of the destinations' `fallback:` lists (router/core/config/): every name exists, none
names its own destination, and no chain of fallbacks leads back to where it started.

Works on raw config data as well as on models, so these problems are listed beside the
others even when some other key is invalid.
"""

from __future__ import annotations

from typing import Any


def _fallbacks(destination: Any) -> list[Any]:
    value = destination.get("fallback") if isinstance(destination, dict) else \
        getattr(destination, "fallback", None)
    return value if isinstance(value, list) else []


def _cycle(graph: dict[str, list[str]], start: str) -> list[str] | None:
    """A path from `start` back to `start` through the graph, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, []):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def fallback_problems(destinations: Any) -> list[str]:
    if not isinstance(destinations, dict):
        return []
    # Names YAML read as numbers are reported by RouterConfig; they would break sorting here.
    destinations = {k: v for k, v in destinations.items() if isinstance(k, str)}
    names = set(destinations)
    problems: list[str] = []
    graph: dict[str, list[str]] = {}
    for name, destination in destinations.items():
        for target in _fallbacks(destination):
            where = f"destinations.{name}.fallback"
            if not isinstance(target, str):
                continue
            if target == name:
                problems.append(f"{where}: a destination cannot be its own fallback")
            elif target not in names:
                known = ", ".join(sorted(names - {name})) or "none defined"
                problems.append(f"{where}: unknown destination {target!r} (known: {known})")
            else:
                graph.setdefault(name, []).append(target)
    reported: set[frozenset[str]] = set()
    for name in sorted(graph):
        loop = _cycle(graph, name)
        if loop is not None and frozenset(loop) not in reported:
            reported.add(frozenset(loop))
            problems.append(f"destinations.{name}.fallback: fallbacks form a loop "
                            f"({' -> '.join(loop)}); a fallback must not fall back to the "
                            "destination it stands in for")
    return problems
