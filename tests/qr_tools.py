"""DCMTK's query/retrieve tools as test helpers: ``run_findscu``, ``run_getscu`` and
``run_movescu``, each with a deadline and TCP_NODELAY=1 (see tests/dcmtk.py).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.dcmtk import dcmtk_env, require_dcmtk

# --------------------------------------------------------------------------------------------
# DCMTK query/retrieve tools
# --------------------------------------------------------------------------------------------

Model = Literal["patient", "study", "worklist"]
_MODEL_FLAGS = {"patient": "-P", "study": "-S", "worklist": "-W"}
# findscu and getscu exit 0 even when the final response is a failure: read the status that
# -v prints ("Success", "Refused: MoveDestinationUnknown", "Failed: UnableToProcess"...).
_FINAL_STATUS = {
    "findscu": re.compile(r"Received Final Find Response \((.*)\)\s*$", re.M),
    "getscu": re.compile(r"Received C-GET Response \((.*)\)\s*$", re.M),
    "movescu": re.compile(r"Received Final Move Response \((.*)\)\s*$", re.M),
}


@dataclass(frozen=True)
class ToolResult:
    """How a query/retrieve tool ended: its final DIMSE status as DCMTK names it ("" when
    no final response came: association refused, aborted, timed out), exit code, output."""

    status: str
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.status == "Success" and self.returncode == 0


class ToolError(RuntimeError):
    """A DCMTK tool failed; ``result`` carries its status and output."""

    def __init__(self, tool: str, result: ToolResult) -> None:
        super().__init__(
            f"{tool} ended with status {result.status or 'none'!r} "
            f"(exit {result.returncode}):\n{result.output}"
        )
        self.result = result


def run_tool(command: list[str], timeout: float, check: bool) -> ToolResult:
    """Run a tool to completion (killed after timeout); ToolError unless ok, with check."""
    done = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    pattern = _FINAL_STATUS.get(command[0])
    statuses = pattern.findall(output) if pattern else []
    status = statuses[-1] if statuses else ("Success" if pattern is None else "")
    result = ToolResult(status, done.returncode, output)
    if check and not result.ok:
        raise ToolError(command[0], result)
    return result


def qr_command(
    tool: str,
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str,
    level: str | None,
    keys: Mapping[str, str],
    model: Model,
    timeout: float,
    options: Sequence[str],
) -> list[str]:
    seconds = str(max(1, int(timeout)))
    command = [tool, "-v", _MODEL_FLAGS[model], "-aet", calling_ae, "-aec", called_ae]
    command += ["-to", seconds, "-ta", seconds, "-td", seconds, *options]
    if level is not None:
        command += ["-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in keys.items():
        command += ["-k", f"{keyword}={value}"]
    return [*command, host, str(port)]


def run_findscu(
    host: str,
    port: int,
    called_ae: str,
    level: str,
    keys: Mapping[str, str],
    model: Model = "study",
    extract_dir: Path | None = None,
    *,
    calling_ae: str = "FINDSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
    check: bool = True,
) -> list[Dataset]:
    """One C-FIND; returns the identifiers of the pending responses, in arrival order.

    ``keys`` are keywords (or gggg,eeee) to match or return ("" asks for the value);
    ``level`` is ignored for the worklist model. findscu -X writes the responses into
    extract_dir (a temporary folder by default), read back with pydicom. With check, raises
    ToolError unless the final response is Success.
    """
    require_dcmtk("findscu")
    with tempfile.TemporaryDirectory(prefix="findscu-") as tmp:
        folder = extract_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        command = qr_command(
            "findscu",
            host,
            port,
            called_ae=called_ae,
            calling_ae=calling_ae,
            level=None if model == "worklist" else level,
            keys=keys,
            model=model,
            timeout=timeout,
            options=["-X", "-od", str(folder), *extra_args],
        )
        run_tool(command, timeout, check)
        return [dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


def run_getscu(
    host: str,
    port: int,
    called_ae: str,
    level: str,
    keys: Mapping[str, str],
    output_dir: Path,
    model: Model = "study",
    *,
    calling_ae: str = "GETSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    check: bool = True,
) -> list[Path]:
    """One C-GET into output_dir (+B: stored as received); returns the files there, sorted.

    getscu proposes each storage SOP class with all uncompressed syntaxes in one context, so
    the archive sends in the syntax it prefers (dcmqrscp and Orthanc convert Implicit VR
    files to Explicit VR here). With check, raises ToolError unless the final status is
    Success (a Warning means some sub-operations failed).
    """
    require_dcmtk("getscu")
    output_dir.mkdir(parents=True, exist_ok=True)
    command = qr_command(
        "getscu",
        host,
        port,
        called_ae=called_ae,
        calling_ae=calling_ae,
        level=level,
        keys=keys,
        model=model,
        timeout=timeout,
        options=["+B", "-od", str(output_dir), *extra_args],
    )
    run_tool(command, timeout, check)
    return sorted(p for p in output_dir.rglob("*") if p.is_file())


def run_movescu(
    host: str,
    port: int,
    called_ae: str,
    level: str,
    keys: Mapping[str, str],
    move_destination: str,
    model: Model = "study",
    *,
    calling_ae: str = "MOVESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    check: bool = True,
) -> ToolResult:
    """One C-MOVE to move_destination (an AE the archive knows how to reach).

    Returns the final status; with check, raises ToolError unless it is Success. What
    arrived is for the destination to say.
    """
    require_dcmtk("movescu")
    command = qr_command(
        "movescu",
        host,
        port,
        called_ae=called_ae,
        calling_ae=calling_ae,
        level=level,
        keys=keys,
        model=model,
        timeout=timeout,
        options=["-aem", move_destination, *extra_args],
    )
    return run_tool(command, timeout, check)
