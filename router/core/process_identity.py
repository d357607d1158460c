"""Whether the process that wrote a name is still running: its pid, and more than its pid.

A pid alone does not say. After a wrap another process may hold a dead writer's pid, and in
a container pids start at 1 again at each start: a pod restarted with its spool volume gives
its new acceptor, or any other process, the pid the killed one had. So a writer names itself
`<pid>.<start>.<boot>`: the start time the kernel gives it (/proc/<pid>/stat field 22, clock
ticks after boot) and the first 8 digits of this boot's id (a start time repeats across
boots). It still runs while, in this boot, a process with that pid has that start time: one
read of /proc per writer, cheap enough for the broker's look once a second. A tag that is a
pid only (an older router's name, or a writer that could not read /proc) falls back to
whether the pid exists. All of a spool's writers run in one PID namespace: the spool lock
(router/core/spool_lock.py) keeps a second router away from it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

PID_DIGITS = 7  # pids stay below 2**22 on Linux (pid_max)


@dataclass(frozen=True)
class ProcessTag:
    pid: int
    started: str | None = None  # kernel start time in clock ticks; None: an older name
    boot: str | None = None  # the first 8 hex digits of the boot id it started in

    def __str__(self) -> str:
        return str(self.pid) if self.started is None else f"{self.pid}.{self.started}.{self.boot}"


def parse_tag(text: str) -> ProcessTag | None:
    """The tag a name starts with (ProcessTag's str), None for text no writer made so."""
    parts = text.split(".")
    if not parts[0].isdigit() or len(parts[0]) > PID_DIGITS:
        return None
    if len(parts) == 1:
        return ProcessTag(int(parts[0]))
    if len(parts) == 3 and parts[1].isdigit() and _is_boot(parts[2]):
        return ProcessTag(int(parts[0]), parts[1], parts[2])
    return None


def _is_boot(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)


def process_start(pid: int) -> str | None:
    """The start time the kernel gives `pid` (/proc/<pid>/stat field 22), None if no such
    process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces
    return fields[19] if len(fields) > 19 else None


@functools.cache
def boot_id() -> str | None:
    """This boot's id, shortened (the same in every PID namespace of the machine)."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return None
    return text[:8] if _is_boot(text[:8]) else None


@functools.cache
def _tag_of(pid: int) -> ProcessTag:
    started, boot = process_start(pid), boot_id()
    return ProcessTag(pid) if started is None or boot is None else ProcessTag(pid, started, boot)


def own_tag() -> ProcessTag:
    """This process's tag (looked up once per pid: a forked child has its own)."""
    return _tag_of(os.getpid())


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process holds that pid: not gone
    return True


def running(tag: ProcessTag) -> bool:
    """Whether the process `tag` names still runs (not merely one with its pid)."""
    if tag.started is None:
        return pid_exists(tag.pid)  # an older name: all a pid can say
    current = boot_id()
    if current is not None and tag.boot != current:
        return False  # started before the machine last booted
    now = process_start(tag.pid)
    if now is None and not os.path.exists("/proc/self/stat"):
        return pid_exists(tag.pid)  # /proc not mounted here: fall back
    return now == tag.started
