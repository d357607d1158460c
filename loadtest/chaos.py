"""Chaos run: storescu senders keep sending while router processes are killed at random.

    .venv/bin/python -m loadtest.chaos --minutes 10 --kill-every 3

The fault tests (tests/integration/test_faults.py) each kill one process at one chosen
moment; this kills whatever comes up, whenever, again and again: an acceptor, the broker, a
worker (the supervisor restarts it), the whole router with `kill -9` of every process
(restarted here on the same spool and ports, as systemd or Kubernetes would) or a
destination (a PACS that crashes and comes back 0.5-3 s later); or it stops the router
gracefully (SIGTERM: it must drain and exit 0) and starts it again, or changes its config
and sends SIGHUP (the reload must be applied). Meanwhile
`senders` storescu processes send batches of mixed instances (several SOP classes and
transfer syntaxes) into the router, and behave like a modality: what was not answered
Success is sent again in a later batch. Once the pool is through, the senders go on with
copies of it under fresh SOP Instance UIDs, so that every file acknowledged is a dataset of
its own and a lost one cannot hide behind an earlier copy. The one rule forwards every
instance to `destinations` storescp (two by default: a PACS and an archive, so that jobs
are often delivered to one and not yet to the other when a kill comes), each without
--fork: one association at a time, like many PACS; each writes every instance it
receives to a file of its own (+uf), so that a delivery it was killed in the middle of
leaves a torn file beside the good one instead of over it. With --tls the senders connect
over TLS (the router's listener in tls mode), so that kills, stops and reloads (which load
the TLS material again) meet TLS associations. With queries (the default here), a viewer
loops relayed C-FIND, C-GET and C-MOVE (move_mode relay, to a workstation storescp without
--fork) through the router to a DCMTK dcmqrscp archive meanwhile
(loadtest/chaos_queries.py; with --tls, C-FIND only, as Debian's getscu and movescu 3.6.7
have no TLS options): each request must end within half the router's request_timeout, and
what is answered Success must be the archive's.

At the end the senders stop, the broker must come to hold no job, incoming/ must be empty
(a killed acceptor's half-received files are the broker's to delete), and every file any
sender was told Success for must be at every destination with its dataset byte-identical
(digests of the dataset after the file meta). Exit 1 if one is missing, if the broker
still holds jobs after 180 s, if incoming/ is not empty, if a killed process did not come
back, if a stop did not exit 0 or a reload was not applied, if anything was
dead-lettered, or, with queries, if a request took past its bound, a Success
answer was not the archive's, or a retrieve's instances stayed in relay/. The test suite
runs a bounded version of this (tests/integration/test_chaos.py); the full length is here.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import re
import shutil
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadtest.chaos_queries import REQUEST_TIMEOUT, QueryReport, Requesters
from loadtest.chaos_senders import Senders
from router.core.owned_names import process_alive, writer_of
from tests.archive_servers import Dcmqrscp
from tests.dcmtk import LOCALHOST, StoreSCP, free_port
from tests.dicom_samples import (
    ALL_SYNTAXES,
    DEFLATED_EXPLICIT_VR_LE,
    dataset_digest,
    generate_mixed_set,
)
from tests.integration.router_process import RouterProcess, wait_for
from tests.pki import CertificateAuthority
from tests.study_set import make_study_set

DEFAULT_WORK = Path("/tmp/dicom-router-bench/chaos")
RETRY = {"max_attempts": 1000, "initial_delay": 0.2, "max_delay": 1.0}
WHOLE_ROUTER = "router"
GRACEFUL_STOP = "router stop"  # SIGTERM under load, as a rolling update sends it
RELOAD = "reload"  # a changed config and SIGHUP under load
DESTINATION = "destination"  # a victim's name is "destination <name>"
DESTINATION_NAMES = ("pacs", "archive", "viewer", "lab")


@dataclass
class ChaosReport:
    seconds: float = 0.0
    associations: int = 0  # storescu runs
    sent: int = 0  # files handed to storescu (a run cut short sends fewer of them)
    acknowledged: int = 0  # answered Success
    distinct_acknowledged: int = 0  # distinct datasets among them
    # Per destination: distinct datasets there, acknowledged ones never arrived (must be
    # 0), second copies (delivery is at least once).
    arrived: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    dead_letters: int = 0
    drained: bool = False  # the broker holds no job any more
    # Instances left in jobs/ without a job record: an acceptor killed between the two
    # (microseconds), its sender never told Success; the next start removes them.
    orphans: int = 0
    # Files left in incoming/ once the senders stopped: what a killed acceptor was
    # receiving, which the broker deletes within a second of its death. Must be 0.
    incoming: int = 0
    # Their names (the writer's pid first), whether that pid still runs, their age: what
    # tells a leftover of a dead acceptor from a receive still going on.
    incoming_files: list[str] = field(default_factory=list)
    # With queries: what the viewer saw, and the files left in relay/ once it stopped
    # (a retrieve's instances on their way to it). Must be 0.
    queries: QueryReport | None = None
    relay: int = 0

    @property
    def ok(self) -> bool:
        return (not any(self.missing.values()) and not self.failures
                and self.dead_letters == 0 and self.drained and self.incoming == 0
                and (self.queries is None or not self.queries.problems)
                and self.relay == 0)

    def lines(self) -> list[str]:
        kills = ", ".join(f"{name} {count}" for name, count in sorted(self.kills.items()))
        return [
            f"chaos: {self.seconds:.0f} s, {sum(self.kills.values())} kills ({kills or 'none'})",
            f"  senders: {self.associations} associations offering {self.sent} files, "
            f"{self.acknowledged} answered Success ({self.distinct_acknowledged} distinct "
            f"datasets)",
            *(f"  destination {name}: {self.arrived[name]} distinct datasets, "
              f"{self.duplicates[name]} second copies; acknowledged and missing: "
              f"{self.missing[name]}" for name in self.arrived),
            f"  dead letters: {self.dead_letters}; spool drained: "
            f"{'yes' if self.drained else 'NO'} ({self.orphans} instance files still in "
            f"jobs/: an acceptor killed before their record, never acknowledged, for the "
            f"next start to remove); files left in incoming/: {self.incoming}"
            + (f" ({'; '.join(self.incoming_files)})" if self.incoming_files else ""),
            *([self.queries.line(), f"  files left in relay/: {self.relay}"]
              if self.queries is not None else []),
            *(f"  FAILED: {failure}" for failure in
              [*self.failures, *(self.queries.problems if self.queries else [])]),
            f"  {'OK' if self.ok else 'FAILED'}",
        ]


class Killer(threading.Thread):
    """Every `every` seconds (+-50%), in a random order: kill -9 of a router process, of
    the whole router or of a destination, a graceful stop and start, or a reload."""

    def __init__(self, router: RouterProcess, destinations: dict[str, StoreSCP],
                 every: float, seed: int, victims: tuple[str, ...] | None = None) -> None:
        """`victims`: deal only the kinds whose names start with one of these (all if None)."""
        super().__init__(name="killer", daemon=True)
        self.router, self.destinations, self.every = router, destinations, every
        self.victims = victims
        self._random = random.Random(seed)
        self._halt = threading.Event()
        self.kills: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.error: BaseException | None = None
        self._deck: list[str] = []
        self.whole_decks = 0  # decks dealt to the last card: every kind hit once per deck

    def stop(self) -> None:
        self._halt.set()
        self.join(120)

    def run(self) -> None:
        try:
            while not self._halt.wait(self.every * self._random.uniform(0.5, 1.5)):
                self._kill_one()
        except BaseException as exc:  # reported by the caller: the run is not valid
            self.error = exc

    def _children(self) -> list[str]:
        names = set(re.findall(r"started (\S+) \(pid \d+\)", self.router.log()))
        return sorted(name for name in names if name != "resource-tracker")

    def _kill_one(self) -> None:
        # Dealt from a shuffled deck of every kind of victim, so that a short run still hits
        # each kind (a worker, the broker, an acceptor, the whole router, each destination)
        # in a random order.
        if not self._deck:
            self._deck = [kind for kind in (
                *self._children(), WHOLE_ROUTER, GRACEFUL_STOP, RELOAD,
                *(f"{DESTINATION} {name}" for name in self.destinations))
                if self.victims is None or kind.startswith(self.victims)]
            if not self._deck:
                raise ValueError(f"no kind of victim starts with any of {self.victims}")
            self._random.shuffle(self._deck)
        victim = self._deck.pop()
        if not self._deck:
            self.whole_decks += 1
        self.kills[victim] += 1
        if victim.startswith(DESTINATION):
            destination = self.destinations[victim.split()[1]]
            destination.kill()
            time.sleep(self._random.uniform(0.5, 3.0))
            destination.start()  # same port: the router's retries find it again
            return
        if victim == GRACEFUL_STOP:
            code = self.router.stop(timeout=90)  # the drain lets transfers in flight finish
            if code != 0:
                self.failures.append(f"a SIGTERM stop under load exited {code}, not 0")
            self.router.start(timeout=60)
            return
        if victim == RELOAD:
            self._reload()
            return
        if victim == WHOLE_ROUTER:
            self.router.kill_all()
            assert self.router.process is not None
            self.router.process.wait(30)
            self.router.start(timeout=60)  # same spool and ports: what a service manager does
            return
        pid = self.router.child_pid(victim)
        if not self.router.is_child(pid):  # never a pid that may be someone else's by now
            self.failures.append(f"{victim} (pid {pid} is not the router's)")
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not wait_for(lambda: _restarted(self.router, victim, pid), timeout=60):
            self.failures.append(f"{victim} not restarted within 60 s")

    def _reload(self) -> None:
        """Change the broker's linger (harmless, but a change every process applies) and
        send SIGHUP; the supervisor must say it reloaded within 30 s."""
        config = yaml.safe_load(self.router.config_path.read_text())
        queue = config.setdefault("queue", {})
        queue["linger"] = 0.03 if queue.get("linger") == 0.02 else 0.02  # default 0.01
        temporary = self.router.config_path.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump(config))
        os.replace(temporary, self.router.config_path)  # never a half-written config
        before = self.router.log().count("config reloaded from")
        assert self.router.process is not None
        self.router.process.send_signal(signal.SIGHUP)
        if not wait_for(lambda: self.router.log().count("config reloaded from") > before,
                        timeout=30):
            self.failures.append("a config reload under load was not applied within 30 s")


def _describe_leftover(path: Path) -> str:
    """A file left in incoming/: its name, whether its writer (the pid it starts with) runs,
    its size and how long since it was last written."""
    writer = writer_of(path.name)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return f"{path.name} (gone since)"
    alive = "unknown writer" if writer is None else \
        f"writer {writer.pid} {'running' if process_alive(writer) else 'gone'}"
    return (f"{path.name}: {alive}, {stat.st_size} bytes, last written "
            f"{time.time() - stat.st_mtime:.1f} s ago")


def _restarted(router: RouterProcess, name: str, old: int) -> bool:
    try:
        return router.child_pid(name) != old
    except LookupError:
        return False


def _drained(router: RouterProcess) -> bool:
    """The broker holds no job, read twice a heartbeat apart (it publishes its gauge once
    a heartbeat; a gauge not published yet is not an empty queue)."""
    def empty() -> bool:
        for line in router.metrics().splitlines():
            if line.startswith("dicom_router_jobs_queued "):
                return float(line.split()[-1]) == 0
        return False

    if not wait_for(empty, timeout=180):
        return False
    time.sleep(2.5)
    return empty()


def _digests(paths: list[Path]) -> list[str]:
    digests = []
    for path in paths:
        try:
            digests.append(dataset_digest(path))
        except (ValueError, struct.error):  # torn by a kill of the destination: not a copy
            continue
    return digests


def run_chaos(work: Path, seconds: float, kill_every: float, senders: int = 3,
              instances: int = 1200, seed: int = 1, destinations: int = 2,
              tls: bool = False, whole_deck: bool = False,
              queries: bool = False, victims: tuple[str, ...] | None = None) -> ChaosReport:
    """The whole run in `work` (created); see the module's docstring. `whole_deck`: go on
    after `seconds` until every kind of victim was dealt once (what a test checks);
    `queries`: a viewer's relayed C-FIND and C-GET meanwhile; `victims`: the kinds dealt, by
    the start of their names (e.g. "acceptor-", RELOAD), every kind if None."""
    if not 1 <= destinations <= len(DESTINATION_NAMES):
        raise ValueError(f"destinations: 1 to {len(DESTINATION_NAMES)}, not {destinations}")
    work.mkdir(parents=True, exist_ok=True)
    # Every syntax but deflated, whose dataset hides the UID that fresh_copy rewrites.
    syntaxes = tuple(uid for uid in ALL_SYNTAXES if uid != DEFLATED_EXPLICIT_VR_LE)
    files = generate_mixed_set(work / "source", instances, size_bytes=4_000, syntaxes=syntaxes)
    report = ChaosReport()
    with contextlib.ExitStack() as stack:
        peers = {name: stack.enter_context(StoreSCP(work / name, name.upper(),
                                                    port=free_port(), extra_args=["+uf"]))
                 for name in DESTINATION_NAMES[:destinations]}
        config: dict[str, Any] = {
            "destinations": {name: {"type": "dicom", "ae_title": peer.ae_title,
                                    "host": "127.0.0.1", "port": peer.port, "retry": RETRY}
                             for name, peer in peers.items()},
            "rules": [{"name": "all", "forward": list(peers)}],
        }
        studies = workstation = None
        router_port = free_port()  # the archive moves to it (relayed C-MOVEs)
        if queries:  # the archive is upstream only: its kills are test_relay_qr's
            studies = make_study_set(work / "studies", patients=2, studies_per_patient=2,
                                     series_per_study=1, instances_per_series=3)
            qr = stack.enter_context(Dcmqrscp(
                work / "qr", studies, "QRARCHIVE",
                move_destinations=[("DICOM-ROUTER", LOCALHOST, router_port)]))
            config["destinations"]["qr-archive"] = {
                "type": "dicom", "ae_title": qr.ae_title, "host": "127.0.0.1",
                "port": qr.port, "dimse_timeout": 10, "move_mode": "relay"}
            if not tls:  # Debian's movescu has no TLS options
                # A workstation: one association at a time; the archive does not know it.
                workstation = stack.enter_context(StoreSCP(work / "workstation", "VIEWER",
                                                           extra_args=["+uf"]))
                config["known_aes"] = {"VIEWER": {"host": "127.0.0.1",
                                                  "port": workstation.port}}
            config["rules"].append({"name": "qr", "query": ["qr-archive"]})
            config["request_timeout"] = REQUEST_TIMEOUT
        tls_args: list[str] = []
        if tls:  # senders verify the router's certificate; it forwards in plain
            ca = CertificateAuthority(work / "pki", "chaos-ca")
            server = ca.issue("router", dns=("localhost",), ip=LOCALHOST, server=True)
            config["listen"] = {"tls": {"mode": "tls", "cert": str(server.cert),
                                        "key": str(server.key), "ca": str(ca.cert_path)}}
            tls_args = ["+tla", "+cf", str(ca.cert_path)]
        router = RouterProcess(work / "router", config, port=router_port).start()
        try:
            sending = Senders(files, router.port, senders, seed, work / "copies", tls_args)
            killer = Killer(router, peers, kill_every, seed + 1, victims)
            viewer = None if studies is None else Requesters(
                studies, router.port, "DICOM-ROUTER", work / "viewer", seed + 2, tls_args,
                workstation)
            started = time.monotonic()
            sending.start()
            killer.start()
            if viewer is not None:
                viewer.start()
            time.sleep(seconds)
            if whole_deck:  # a slow machine deals fewer kills in the same time
                wait_for(lambda: killer.whole_decks >= 1, timeout=max(120.0, 3 * seconds))
            killer.stop()
            sending.stop()
            if viewer is not None:
                viewer.stop()
            report.seconds = time.monotonic() - started
            if killer.error is not None:
                raise RuntimeError(f"the killer failed: {killer.error!r}") from killer.error
            if viewer is not None:
                if viewer.error is not None:
                    raise RuntimeError(f"the viewer failed: {viewer.error!r}") \
                        from viewer.error
                report.queries = viewer.report
                # A C-GET that ended without the upstream's last answer has its relay/
                # leftovers removed 10 s later (router/relay/server.py, LATE_CLEAR_SECONDS).
                relay = router.spool / "relay"
                wait_for(lambda: not any(relay.iterdir()), timeout=30)
                report.relay = len(list(relay.iterdir()))
            report.kills, report.failures = killer.kills, killer.failures
            report.associations, report.sent = sending.associations, sending.sent
            report.acknowledged = len(sending.acknowledged)
            report.drained = _drained(router)
            report.orphans = len(list((router.spool / "jobs").glob("*.dcm")))
            left = list((router.spool / "incoming").iterdir())
            report.incoming = len(left)
            report.incoming_files = [_describe_leftover(path) for path in left[:5]]
            wanted = set(_digests(sending.acknowledged))
            report.distinct_acknowledged = len(wanted)
            for name, peer in peers.items():
                received = _digests(peer.received_files())
                arrived = set(received)
                report.arrived[name] = len(arrived)
                report.duplicates[name] = len(received) - len(arrived)
                report.missing[name] = len(wanted - arrived)
            report.dead_letters = len(list((router.spool / "dead-letters").glob("*.json")))
        finally:
            router.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kill-every", type=float, default=3.0,
                        help="mean seconds between two kills (each wait is +-50%%)")
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--instances", type=int, default=3000,
                        help="distinct instances in the senders' pool")
    parser.add_argument("--destinations", type=int, default=2,
                        choices=range(1, len(DESTINATION_NAMES) + 1),
                        help="storescp the rule forwards to, each one association at a time")
    parser.add_argument("--tls", action="store_true",
                        help="the senders connect over TLS (the router's listener in tls mode)")
    parser.add_argument("--queries", action=argparse.BooleanOptionalAction, default=True,
                        help="a viewer's relayed C-FIND and C-GET meanwhile (default on)")
    parser.add_argument("--victims", default=None,
                        help="deal only these kinds, by the start of their names, comma "
                             "separated (e.g. acceptor-,router,reload); default every kind")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args(argv)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    print(f"seed {args.seed}", flush=True)
    report = run_chaos(args.work_dir, args.minutes * 60, args.kill_every, args.senders,
                       args.instances, args.seed, args.destinations, args.tls,
                       queries=args.queries,
                       victims=tuple(args.victims.split(",")) if args.victims else None)
    print("\n".join(report.lines()))
    if not report.ok:
        print(f"the router's log: {args.work_dir / 'router' / 'router.log'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
