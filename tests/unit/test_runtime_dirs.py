"""A router that starts removes the runtime folders of routers killed without stopping
(router/core/runtime_dirs.py), and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from router.core.runtime_dirs import (
    LOCK_FILE,
    OWNER_FILE,
    PREFIX,
    create_runtime_dir,
    process_start,
    remove_stale_runtime_dirs,
)


def _gone_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def _folder(parent: Path, name: str, owner: str | None) -> Path:
    folder = parent / name
    (folder / "metrics").mkdir(parents=True)
    (folder / "metrics" / "counter_1.db").write_bytes(b"\0" * 64)
    if owner is not None:
        (folder / OWNER_FILE).write_text(owner)
    return folder


def test_only_the_folders_of_supervisors_that_are_gone_are_removed(tmp_path: Path) -> None:
    mine = create_runtime_dir(tmp_path)  # this process: running
    assert mine.name.startswith(PREFIX)
    killed = _folder(tmp_path, f"{PREFIX}killed", f"{_gone_pid()} 12345\n")
    # The same pid as a running process but another start time: a pid used again, as a
    # container's pid 1 after a restart.
    reused = _folder(tmp_path, f"{PREFIX}reused", f"{os.getpid()} 1\n")
    no_owner = _folder(tmp_path, f"{PREFIX}bench", None)  # another tool's, or an old router's
    unreadable = _folder(tmp_path, f"{PREFIX}garbled", "not a pid\n")
    other = _folder(tmp_path, "something-else", f"{_gone_pid()} 1\n")
    # Written where /proc could not be read: only whether the pid lives is known.
    unknown_live = _folder(tmp_path, f"{PREFIX}unknown-live", f"{os.getpid()} -\n")
    unknown_gone = _folder(tmp_path, f"{PREFIX}unknown-gone", f"{_gone_pid()} -\n")
    assert sorted(remove_stale_runtime_dirs(tmp_path)) == sorted([killed, reused,
                                                                   unknown_gone])
    assert not killed.exists() and not reused.exists() and not unknown_gone.exists()
    assert mine.exists() and no_owner.exists() and unreadable.exists() and other.exists()
    assert unknown_live.exists()
    assert remove_stale_runtime_dirs(tmp_path) == []


def test_the_owner_file_names_this_process_and_its_start(tmp_path: Path) -> None:
    folder = create_runtime_dir(tmp_path)
    pid, started = (folder / OWNER_FILE).read_text().split()
    assert int(pid) == os.getpid() and started == process_start(os.getpid())
    assert process_start(_gone_pid()) is None


def test_a_folder_whose_lock_is_held_is_kept_whatever_pid_it_names(tmp_path: Path) -> None:
    """Liveness is the lock, not the pid: a router in another PID namespace names a pid
    that this /proc knows as nothing, or as another process (it was deleted while it ran)."""
    held = _folder(tmp_path, f"{PREFIX}other-namespace", f"{_gone_pid()} 12345\n")
    (held / LOCK_FILE).touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1]); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
         str(held / LOCK_FILE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        # A free lock: its supervisor is gone, even if the pid it names runs here.
        free = _folder(tmp_path, f"{PREFIX}free", f"{os.getpid()} {process_start(os.getpid())}\n")
        (free / LOCK_FILE).touch()
        assert remove_stale_runtime_dirs(tmp_path) == [free]
        assert held.exists() and not free.exists()
    finally:
        holder.kill()  # the kernel releases its lock
        holder.wait()
    assert remove_stale_runtime_dirs(tmp_path) == [held]


def test_this_routers_own_folder_is_locked(tmp_path: Path) -> None:
    mine = create_runtime_dir(tmp_path)
    assert (mine / LOCK_FILE).exists()
    assert remove_stale_runtime_dirs(tmp_path) == [] and mine.exists()
