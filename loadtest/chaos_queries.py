"""Relayed queries and retrieves during a chaos run: what a viewer sees while router
processes die.

One requester loops C-FIND (every study), C-GET (one study) and a relayed C-MOVE (one study,
to a workstation: a storescp without --fork that the router knows, and the archive only
through the router) through the router to a DCMTK dcmqrscp archive, one request at a time,
as a viewer does (over TLS C-FIND only: Debian's getscu and movescu have no TLS). Under
kills a request may fail (a refused or aborted association, a failure status): the viewer
asks again. What must never happen, and is reported as a
failure:
- a request left waiting: each ends (a final response, an abort, a refusal) within half
  the router's `request_timeout`, so that no kill leaves a requester to that timeout (a
  dead worker's requests are failed by the broker, a dead broker's by the acceptor's probe,
  a dead acceptor's association is reset);
- a C-FIND answered Success without exactly the archive's studies;
- a C-GET answered Success whose instances are not the archive's, byte for byte (or equal
  once decoded, for a syntax the archive converted); likewise a C-MOVE answered Success and
  what the workstation then holds of that study.
The run's end checks the spool's relay/ folder too (loadtest/chaos.py): the instances of a
retrieve on their way to the requester go when it ends or its process dies.
"""

from __future__ import annotations

import collections
import random
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info

from tests.dcmtk import LOCALHOST, StoreSCP
from tests.qr_tools import qr_command, run_tool
from tests.study_set import StudySet, instance_mismatches

REQUEST_TIMEOUT = 60.0  # the router's request_timeout in a run with queries
BOUND = REQUEST_TIMEOUT / 2  # what a request may take, whatever is killed meanwhile
TOOL_TIMEOUT = 90.0  # the tools' own DIMSE/ACSE timeouts: past request_timeout, so that a
# request the router leaves to its timeout shows as one that took too long


@dataclass
class QueryReport:
    finds_ok: int = 0
    finds_failed: int = 0  # refused, aborted or a failure status: the viewer asks again
    gets_ok: int = 0
    gets_failed: int = 0
    moves_ok: int = 0
    moves_failed: int = 0
    slowest: float = 0.0  # seconds, request to its end
    # How the failed ones ended: the final status DCMTK printed, or none (refused,
    # aborted, the connection reset by a killed acceptor).
    endings: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        endings = ", ".join(f"{what} {n}" for what, n in self.endings.most_common())
        return (f"  queries: C-FIND {self.finds_ok} answered Success, {self.finds_failed} "
                f"failed; C-GET {self.gets_ok} Success, {self.gets_failed} failed; C-MOVE "
                f"{self.moves_ok} Success, {self.moves_failed} failed "
                f"({endings or 'none failed'}); the slowest ended after {self.slowest:.1f} s")


class Requesters(threading.Thread):
    def __init__(self, archive: StudySet, port: int, called_ae: str, work: Path,
                 seed: int, tls_args: list[str] | None = None,
                 workstation: StoreSCP | None = None) -> None:
        super().__init__(name="requesters", daemon=True)
        self.archive, self.port, self.called_ae, self.work = archive, port, called_ae, work
        # DCMTK's TLS options, as the senders'. Debian's getscu 3.6.7 has none ("Unknown
        # option +tla"), so over TLS the viewer only queries.
        self.tls_args = list(tls_args or [])
        self.workstation = workstation  # the relayed C-MOVEs' destination (None: no moves)
        self._random = random.Random(seed)
        self._halt = threading.Event()
        self.report = QueryReport()
        self.error: BaseException | None = None
        self._study_uids = {s.study_instance_uid for s in archive.studies}

    def stop(self) -> None:
        self._halt.set()
        self.join(TOOL_TIMEOUT + 30)

    def run(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            while not self._halt.wait(self._random.uniform(0.1, 0.5)):
                pick = self._random.random()
                if self.tls_args or pick < 0.4:
                    self._find()
                elif self.workstation is None or pick < 0.7:
                    self._get()
                else:
                    self._move(self.workstation)
        except BaseException as exc:  # reported by the caller: the run is not valid
            self.error = exc

    def _find(self) -> None:
        with tempfile.TemporaryDirectory(dir=self.work) as tmp:
            command = qr_command("findscu", LOCALHOST, self.port, called_ae=self.called_ae,
                                 calling_ae="CHAOSFIND", level="STUDY",
                                 keys={"StudyInstanceUID": ""}, model="study",
                                 timeout=TOOL_TIMEOUT,
                                 options=["-X", "-od", tmp, *self.tls_args])
            if not self._ran("C-FIND", command):
                self.report.finds_failed += 1
                return
            found = {str(dcmread(p).StudyInstanceUID) for p in Path(tmp).glob("rsp*.dcm")}
            if found != self._study_uids:
                self.report.problems.append(
                    f"a C-FIND answered Success with {len(found)} studies, not the "
                    f"archive's {len(self._study_uids)}")
            self.report.finds_ok += 1

    def _get(self) -> None:
        study = self._random.choice(self.archive.studies)
        with tempfile.TemporaryDirectory(dir=self.work) as tmp:
            command = qr_command("getscu", LOCALHOST, self.port, called_ae=self.called_ae,
                                 calling_ae="CHAOSGET", level="STUDY",
                                 keys={"StudyInstanceUID": study.study_instance_uid},
                                 model="study", timeout=TOOL_TIMEOUT,
                                 options=["+B", "-od", tmp])
            if not self._ran("C-GET", command):
                self.report.gets_failed += 1
                return
            files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
            mismatches = instance_mismatches(study.instances, files)
            if mismatches:
                self.report.problems.append(
                    f"a C-GET answered Success, but: {'; '.join(mismatches[:3])}")
            self.report.gets_ok += 1

    def _move(self, workstation: StoreSCP) -> None:
        study = self._random.choice(self.archive.studies)
        for path in workstation.received_files():  # what it holds of this move, below
            path.unlink(missing_ok=True)
        command = qr_command("movescu", LOCALHOST, self.port, called_ae=self.called_ae,
                             calling_ae="CHAOSMOVE", level="STUDY",
                             keys={"StudyInstanceUID": study.study_instance_uid},
                             model="study", timeout=TOOL_TIMEOUT,
                             options=["-aem", workstation.ae_title])
        if not self._ran("C-MOVE", command):
            self.report.moves_failed += 1
            return
        wanted = {i.sop_instance_uid for i in study.instances}
        files = [p for p in workstation.received_files()
                 if str(read_file_meta_info(p).MediaStorageSOPInstanceUID) in wanted]
        mismatches = instance_mismatches(study.instances, files)
        if mismatches:
            self.report.problems.append(
                f"a C-MOVE answered Success, but: {'; '.join(mismatches[:3])}")
        self.report.moves_ok += 1

    def _ran(self, what: str, command: list[str]) -> bool:
        """Run one request; True when it ended with Success. A request that took past the
        bound is a problem whatever its end."""
        started = time.monotonic()
        try:
            result = run_tool(command, TOOL_TIMEOUT + 10, check=False)
        except subprocess.TimeoutExpired:
            result = None
        took = time.monotonic() - started
        self.report.slowest = max(self.report.slowest, took)
        if took > BOUND:
            self.report.problems.append(
                f"a {what} took {took:.0f} s to end (request_timeout {REQUEST_TIMEOUT:g} s)"
                + ("" if result is None else f", status {result.status or 'none'!r}"))
        ok = result is not None and result.ok
        if not ok:
            ending = "killed at the tool's timeout" if result is None else \
                (result.status or "no final response")
            self.report.endings[f"{what} {ending}"] += 1
        return ok
