"""A pid is reused for real: two starts in fresh PID namespaces, as two starts of a pod with
one spool volume, where a killed acceptor's pid goes to another process of the next start.
What the killed one left (a job made durable and never handed over, a half-received file)
is still taken as a dead writer's (router/core/process_identity.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Start 1: the acceptor (pid 2 here) commits a job and begins receiving another; killed.
WRITER = """
import os, signal, sys, time
from pathlib import Path
from router.core.owned_names import incoming_name
from router.core.spool import Spool
from tests.unit.helpers import make_header
spool = Spool(Path(sys.argv[1])).create()
read, write = os.pipe()
child = os.fork()
if child == 0:
    received = spool.incoming / incoming_name()
    received.write_bytes(b"DICM")
    spool.commit(make_header("job-orphan"), received)
    (spool.incoming / incoming_name()).write_bytes(b"half a dataset")
    os.write(write, b"x")
    time.sleep(60)
    os._exit(0)
os.read(read, 1)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
print(child)
"""

# Start 2: another process gets that pid, then the broker looks (as once a second).
READER = """
import json, subprocess, sys
from pathlib import Path
from router.broker.orphans import OrphanedJournals
from router.core.spool import Spool
stranger = subprocess.Popen(["sleep", "60"])
spool = Spool(Path(sys.argv[1])).create()
jobs = OrphanedJournals(spool).collect(lambda job_id: True)
print(json.dumps({"pid": stranger.pid, "jobs": [job.header.job_id for job in jobs],
                  "incoming": sorted(p.name for p in spool.incoming.iterdir())}))
stranger.kill()
"""


def _in_new_pid_namespace(script: str, spool: Path) -> str:
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                           "-c", script, str(spool)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --pid (root or CAP_SYS_ADMIN)")
def test_a_killed_acceptors_leftovers_are_taken_though_the_next_start_reuses_its_pid(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    writer = int(_in_new_pid_namespace(WRITER, spool))
    seen = json.loads(_in_new_pid_namespace(READER, spool))
    assert seen["pid"] == writer  # the same pid, another process
    assert seen["jobs"] == ["job-orphan"]  # queued, not left to wait for that process
    assert seen["incoming"] == []  # its half-received file deleted
