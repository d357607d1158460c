"""DCMTK peers of the benchmark: the destination (storescp) and the senders (storescu).

Sender-side latency: storescu logs through log4cplus, and a logger config (-lc) with a
UTC timestamp of microsecond resolution (``%d{%Y-%m-%d %H:%M:%S.%Q}``) on every line
gives the time of each 'Sending Store Request' and of the 'Received Store Response'
that follows it (one request in flight per association): their difference is the
sender-side C-STORE latency, request start to response.

Delivery: storescp (``--fork``, ``+B``) writes each instance straight to its final name
while it receives it, so a file that exists is not yet a delivered one. The destination
counts as complete when it holds ``count`` files and their bytes add up to at least the
datasets sent plus a preamble each (a file still missing its last PDU cannot); the
moment of delivery is then the newest file mtime.
"""

from __future__ import annotations

import calendar
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.dcmtk import LOCALHOST, StoreSCP, _association_config, dcmtk_env

PDU = 131_072  # the largest PDU DCMTK 3.6.7 tools accept
DEST_AE = "DEST"

_LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %d{%Y-%m-%d %H:%M:%S.%Q} %m%n
"""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def make_tls(folder: Path) -> TlsFiles:
    """A self-signed RSA certificate for 127.0.0.1 (server side; clients trust it)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
    return TlsFiles(cert, key)


# `make bench` runs DCMTK with TCP_NODELAY=1 (its fastest); --dcmtk-defaults sets this so
# that storescu and storescp keep DCMTK's own default since 3.6.2, Nagle on, as the DCMTK
# inside many modalities and PACS does (docs/benchmark.md, "DCMTK defaults").
DCMTK_DEFAULTS = {"on": False}


def peer_env() -> dict[str, str]:
    """The environment of a DCMTK peer: TCP_NODELAY=1, unless --dcmtk-defaults."""
    return dict(os.environ) if DCMTK_DEFAULTS["on"] else dcmtk_env()


def destination(folder: Path, tls: TlsFiles | None = None, fork: bool = True) -> StoreSCP:
    """A bit-preserving storescp (the PACS every case delivers to): forking (an association
    per process), or without --fork: one association at a time, like many real PACS."""
    extra = (["--fork"] if fork else []) + ["-pdu", str(PDU)]
    if tls is not None:
        extra += ["+tls", str(tls.key), str(tls.cert), "-ic"]
    return StoreSCP(folder, DEST_AE, extra_args=extra, nagle=DCMTK_DEFAULTS["on"])


def wait_delivered(folder: Path, count: int, min_bytes: int, deadline: float) -> float | None:
    """Epoch time the destination completed (newest mtime), or None at the deadline."""
    while time.monotonic() < deadline:
        names = os.listdir(folder) if folder.exists() else []
        if len(names) >= count:
            stats = [os.stat(folder / n) for n in names]
            if sum(s.st_size for s in stats) >= min_bytes:
                time.sleep(0.05)  # let a file closing right now settle its mtime
                return max(os.stat(folder / n).st_mtime for n in names)
        time.sleep(0.05 if len(names) < count * 0.9 else 0.01)
    return None


def file_meta_length(path: Path) -> int:
    """Bytes of preamble, DICM and file meta group of a Part 10 file we generated."""
    with path.open("rb") as fp:
        head = fp.read(144)
    # (0002,0000) UL group length is first after DICM: 12 bytes of header + value.
    return 132 + 12 + int.from_bytes(head[140:144], "little")


@dataclass
class SenderRun:
    """What the senders of one run did."""

    first_send: float = 0.0  # epoch of the first 'Sending Store Request'
    last_response: float = 0.0  # epoch of the last 'Received Store Response'
    latencies: list[float] = field(default_factory=list)  # seconds, one per C-STORE
    sent: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)


def _epoch(line: str) -> float:
    # "2026-11-25 14:28:22.233.172 ..." (UTC): seconds from the date, then ms and us.
    secs = calendar.timegm(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
    return secs + int(line[20:23]) / 1e3 + int(line[24:27]) / 1e6


def parse_storescu_log(text: str, run: SenderRun) -> None:
    pending: float | None = None
    for line in text.splitlines():
        if len(line) < 28 or line[4] != "-":
            continue
        message = line[28:]
        if message.startswith("Sending Store Request"):
            pending = _epoch(line)
            run.first_send = pending if not run.first_send else min(run.first_send, pending)
        elif message.startswith("Received Store Response") and pending is not None:
            done = _epoch(line)
            run.latencies.append(done - pending)
            run.last_response = max(run.last_response, done)
            run.sent += 1
            if "(Success)" not in message:
                run.failures += 1
            pending = None


def send(
    groups: list[list[Path]],
    contexts: list[tuple[str, str]],
    port: int,
    called_ae: str,
    workdir: Path,
    *,
    tls: TlsFiles | None = None,
    timeout: float = 600.0,
) -> SenderRun:
    """One storescu per group, all at once, each sending its files in one association."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "storescu.cfg"
    config.write_text(_association_config(contexts))
    log_config = workdir / "log.cfg"
    log_config.write_text(_LOG_CONFIG)
    procs = []
    for i, files in enumerate(groups):
        command = ["storescu", "-xf", str(config), "AsIs", "-lc", str(log_config),
                   "-aet", f"BENCH{i}", "-aec", called_ae, "-pdu", str(PDU),
                   "-to", "60", "-ta", "60", "-td", "120", "-nh"]
        if tls is not None:
            command += ["+tla", "+cf", str(tls.cert)]
        command += [LOCALHOST, str(port), *(str(f) for f in files)]
        log = (workdir / f"storescu-{i}.log").open("wb")
        procs.append((subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=peer_env()), log))
    run = SenderRun()
    deadline = time.monotonic() + timeout
    for i, (proc, log) in enumerate(procs):
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            run.errors.append(f"storescu {i} timed out")
        log.close()
        text = (workdir / f"storescu-{i}.log").read_text(errors="replace")
        parse_storescu_log(text, run)
        if code != 0:
            tail = " | ".join(text.strip().splitlines()[-3:])
            run.errors.append(f"storescu {i} exited {code}: {tail}")
    return run
