"""Fail when a module outside router/dicom/ imports one of pynetdicom's internal modules.

pynetdicom's documented API is the package itself (AE, evt, build_context, ...) and the
modules its user guide names (association, presentation, sop_class, dsutils,
dimse_primitives, status). Everything below is internal and changes between releases: the
router keeps its use of it in router/dicom/, behind one version check (router/dicom/net.py).
Run by `make lint`; exit 1 lists each offending import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

INTERNAL = frozenset({
    "acse", "dul", "fsm", "pdu", "pdu_items", "pdu_primitives", "transport", "timer",
    "dimse", "dimse_messages", "_config", "_handlers", "_globals", "utils",
})
ALLOWED = Path("router/dicom")


def offences(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if isinstance(node, ast.ImportFrom) and node.module == "pynetdicom":
            names += [f"pynetdicom.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pynetdicom" and len(parts) > 1 and parts[1] in INTERNAL:
                found.append(f"{path}:{node.lineno}: imports {name}")
    return found


def main() -> int:
    problems = [line for root in ("router", "workers") for path in sorted(Path(root).rglob("*.py"))
                if not path.is_relative_to(ALLOWED) for line in offences(path)]
    for line in problems:
        print(f"{line} (pynetdicom internals belong in router/dicom/)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
