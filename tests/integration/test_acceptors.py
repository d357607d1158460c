"""Several acceptor processes on one port (listen.acceptors, SO_REUSEPORT): the kernel spreads
associations over them, /status shows each one, a killed acceptor is restarted alone while
the others go on, and a stop drains every one of them."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import CTImageStorage

from router.core.acceptor_status import acceptor_snapshots, open_associations
from router.core.owned_names import writer_pid
from tests.dcmtk import LOCALHOST, StoreSCP, run_storescu
from tests.dicom_samples import (
    EXPLICIT_VR_LE,
    _skip_file_meta,
    dataset_digest,
    generate_mixed_set,
    write_instance,
)
from tests.integration import pdus
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.router_process import ROUTER, RouterProcess, http_get, wait_for
from tests.integration.senders import BackgroundSend, acknowledged

pytestmark = pytest.mark.integration

AE = "DICOM-ROUTER"
STORAGE_CONTEXT = 3  # CT Image Storage in pdus.DEFAULT_CONTEXTS
FAST_RETRY = {"max_attempts": 1000, "initial_delay": 0.2, "max_delay": 1.0}


def _config(scp: StoreSCP, acceptors: int, **extra: Any) -> dict[str, Any]:
    return {"listen": {"acceptors": acceptors},
            "destinations": {"pacs": {**dicom_destination(scp), "retry": FAST_RETRY}},
            "rules": [{"name": "all", "forward": ["pacs"]}], **extra}


def _acceptors(router: RouterProcess) -> dict[str, dict[str, Any]]:
    return acceptor_snapshots(router.status())


def _process(router: RouterProcess, name: str) -> dict[str, Any]:
    return next(p for p in router.status()["processes"] if p["name"] == name)


def _all_arrived(router: RouterProcess, scp: StoreSCP, sent: list[Path]) -> set[str]:
    """What of `sent` has not arrived after waiting for it. (Not "the spool is empty": a
    commit a killed acceptor finished but never handed over, whose sender was not told
    Success, waits on the spool for the next start.)"""
    wanted = {dataset_digest(p) for p in sent}

    def missing() -> set[str]:
        return wanted - {dataset_digest(p) for p in scp.received_files()}

    wait_for(lambda: not missing(), timeout=120, interval=0.5)
    return missing()


def test_parallel_senders_spread_over_two_acceptors(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """16 associations from 4 parallel senders: both acceptors take some (counted in their
    /status snapshots, not guessed from timing), and every instance reaches a storescp that
    serves one association at a time."""
    sources = generate_mixed_set(tmp_path / "src", 48, size_bytes=4_000)
    groups = [sources[i::16] for i in range(16)]
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        router = start_router(_config(pacs, acceptors=2))
        assert {p["name"] for p in router.status()["processes"]} >= {"acceptor-1",
                                                                     "acceptor-2"}
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda files: run_storescu(
                files, LOCALHOST, router.port, called_ae=AE, extra_args=["-v", "-nh"]), groups))
        assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
        acked = [p for r in results for p in acknowledged(r.stdout + r.stderr)]
        assert sorted(acked) == sorted(sources)

        def counted() -> bool:
            snaps = _acceptors(router)
            return sum(s.get("stored", 0) for s in snaps.values()) == len(sources)

        assert wait_for(counted, timeout=15), _acceptors(router)
        snaps = _acceptors(router)
        accepted = {name: s["accepted"] for name, s in snaps.items()}
        print(f"\nACCEPTORS associations per acceptor: {accepted}, instances stored: "
              f"{ {name: s['stored'] for name, s in snaps.items()} }")
        assert set(accepted) == {"acceptor-1", "acceptor-2"}
        assert sum(accepted.values()) == len(groups)
        assert all(count > 0 for count in accepted.values()), accepted
        # The metrics of both processes are summed as every process's counters are.
        assert router.metric_sum("dicom_router_associations_total",
                                 result="accepted") == len(groups)
        assert not _all_arrived(router, pacs, sources)

        # SIGHUP reaches both: a new allowlist turns away every association, on either.
        config = yaml.safe_load(router.config_path.read_text())
        config["listen"]["allowed_calling_ae"] = ["SOMEONE-ELSE"]
        router.config_path.write_text(yaml.safe_dump(config))
        assert router.process is not None
        router.process.send_signal(signal.SIGHUP)
        applied = re.compile(r"(acceptor-\d) router\.acceptor\.main: applied the reloaded")
        assert wait_for(lambda: set(applied.findall(router.log())) == {"acceptor-1",
                                                                       "acceptor-2"},
                        timeout=30), router.log()[-3000:]
        with ThreadPoolExecutor(4) as pool:
            refused = list(pool.map(lambda files: run_storescu(
                files, LOCALHOST, router.port, called_ae=AE), groups[:8]))
        assert all(r.returncode != 0 for r in refused)
        assert router.metric("dicom_router_association_rejections_total",
                             reason="calling_ae") == 8


def test_a_killed_acceptor_is_restarted_alone_and_nothing_acknowledged_is_lost(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """kill -9 of acceptor-1 while 6 senders send and each acceptor holds a C-STORE half
    sent: acceptor-1's association is cut, acceptor-2's finishes with Success, the senders'
    unacknowledged files are sent again (as a modality would), acceptor-1 comes back with a
    new pid, and every acknowledged instance arrives."""
    sources = generate_mixed_set(tmp_path / "src", 600, size_bytes=4_000)
    groups = [sources[i::6] for i in range(6)]
    uid, body = _dataset(tmp_path / "held")
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        router = start_router(_config(pacs, acceptors=2))
        survivor = router.child_pid("acceptor-2")
        held = _held_on_each_acceptor(router, uid, body)
        try:
            sends = [BackgroundSend(files, router.port) for files in groups]
            for send in sends:
                send.start()
            victim = router.child_pid("acceptor-1")
            os.kill(victim, signal.SIGKILL)
            for send in sends:
                send.join(240)
            # The association acceptor-2 holds goes on as if nothing happened; acceptor-1's
            # is gone with its process.
            held["acceptor-2"].send(pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, body[10_000:],
                                                             command=False)]))
            assert pdus.status_of(held["acceptor-2"].read_command()) == 0x0000
            held["acceptor-2"].release()
            assert _cut(held["acceptor-1"])
        finally:
            for conn in held.values():
                conn.close()
        acked = [p for send in sends for p in send.acknowledged()]

        assert wait_for(lambda: router.child_pid("acceptor-1") != victim, timeout=30)
        assert wait_for(lambda: _process(router, "acceptor-1")["state"] == "accepting",
                        timeout=30), router.status()["processes"]
        assert router.child_pid("acceptor-2") == survivor, "acceptor-2 was restarted too"
        assert _process(router, "acceptor-1")["restarts"] == 1
        assert _process(router, "acceptor-2")["restarts"] == 0
        assert router.metric("dicom_router_process_restarts_total", process="acceptor") == 1
        # The modalities send what was not acknowledged again, until all of it was.
        missing = sorted(set(sources) - set(acked))
        for _ in range(5):
            if not missing:
                break
            again = run_storescu(missing, LOCALHOST, router.port, called_ae=AE,
                                 extra_args=["-v", "-nh"])
            acked += acknowledged(again.stdout + again.stderr)
            missing = sorted(set(sources) - set(acked))
        assert not missing, f"{len(missing)} files never acknowledged"
        assert not _all_arrived(router, pacs, sources)
        held_digest = hashlib.sha256(body).hexdigest()  # Explicit VR LE: stored as sent
        assert wait_for(lambda: held_digest in {dataset_digest(p)
                                                for p in pacs.received_files()}, timeout=60)
        assert http_get(router.metrics_port, "/readyz")[0] == 200


def _held_on_each_acceptor(router: RouterProcess, uid: str, body: bytes,
                           ) -> dict[str, pdus.RawAssociation]:
    """A half-sent C-STORE on each acceptor, by name (the kernel picks the acceptor of a
    connection: connect until both hold one, closing the extra ones)."""
    held: dict[str, pdus.RawAssociation] = {}
    for _ in range(40):
        conn = _half_sent_store(router.port, uid, body)
        peer = f"{LOCALHOST}:{conn.sock.getsockname()[1]}"

        def owner() -> str | None:
            return next((row["acceptor"] for row in open_associations(router.status())
                         if row["peer"] == peer), None)  # noqa: B023

        assert wait_for(lambda: owner() is not None, timeout=15)
        name = owner()
        assert name is not None
        if name in held:
            conn.close()
        else:
            held[name] = conn
        if len(held) == 2:
            return held
    for conn in held.values():
        conn.close()
    raise AssertionError("40 connections all went to one acceptor")


def _cut(conn: pdus.RawAssociation) -> bool:
    """The peer's end of the connection is gone (EOF or reset), within the socket timeout."""
    try:
        return conn.sock.recv(65536) == b""
    except ConnectionError:
        return True


def _dataset(tmp_path: Path) -> tuple[str, bytes]:
    path = write_instance(tmp_path, sop_class=CTImageStorage, transfer_syntax=EXPLICIT_VR_LE,
                          size_bytes=20_000)
    with path.open("rb") as fp:
        _skip_file_meta(fp)
        body = fp.read()
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID), body


def _half_sent_store(port: int, uid: str, body: bytes) -> pdus.RawAssociation:
    """An association holding a C-STORE whose first 10,000 dataset bytes are sent."""
    conn = pdus.RawAssociation(LOCALHOST, port, timeout=30)
    conn.associate(called_ae=AE, calling_ae="MODALITY", max_pdu=65536)
    conn.accepted_context(STORAGE_CONTEXT)
    conn.send(pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, pdus.c_store_rq(uid), command=True)]))
    conn.send(pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, body[:10_000], command=False,
                                       last=False)]))
    return conn


def test_stop_drains_every_acceptor(tmp_path: Path) -> None:
    """SIGTERM while each acceptor holds a C-STORE half sent: no new connection is taken,
    both transfers may finish and get Success, then the router exits 0 with both on the
    spool."""
    uid, body = _dataset(tmp_path / "src")
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        config = _config(pacs, acceptors=2, drain_grace=60)
        config["destinations"]["pacs"]["port"] = 9  # nothing listens: the jobs stay queued
        router = RouterProcess(tmp_path / "router", config).start()
    held: list[pdus.RawAssociation] = []
    try:
        # Connect until each acceptor holds a half-sent C-STORE (the kernel picks).
        for _ in range(40):
            held.append(_half_sent_store(router.port, uid, body))
            count = len(held)
            assert wait_for(lambda: len(open_associations(router.status())) == count,  # noqa: B023
                            timeout=15)
            snaps = _acceptors(router)
            if len(snaps) == 2 and all(s["associations"] for s in snaps.values()):
                break
        else:
            raise AssertionError("40 connections all went to one acceptor")
        owners = {row["acceptor"] for row in open_associations(router.status())}
        assert owners == {"acceptor-1", "acceptor-2"}
        assert router.process is not None
        router.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "stopping: no new associations" in router.log()
                        and router.log().count("stopping: no new associations") == 2,
                        timeout=15), router.log()[-3000:]
        assert wait_for(lambda: _refused(router.port), timeout=15), "a new connection was taken"
        for conn in held:
            conn.send(pdus.p_data_tf([pdus.pdv(STORAGE_CONTEXT, body[10_000:], command=False)]))
            assert pdus.status_of(conn.read_command()) == 0x0000
            conn.release()
        assert router.process.wait(60) == 0, router.log()[-3000:]
    finally:
        for conn in held:
            conn.close()
        router.stop()
    assert len(list((router.spool / "jobs").glob("*.dcm"))) == len(held)


def _refused(port: int) -> bool:
    try:
        with socket.create_connection((LOCALHOST, port), timeout=2):
            return False
    except OSError:
        return True


def _run_to_exit(config_path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, "run", "--config", str(config_path)], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def _archive(tmp_path: Path, **listen: Any) -> dict[str, Any]:
    return {"listen": {"acceptors": 2, **listen},
            "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
            "rules": [{"name": "all", "forward": ["archive"]}]}


def test_a_second_router_cannot_share_the_port(start_router: RouterFactory,
                                               tmp_path: Path) -> None:
    """SO_REUSEPORT lets the acceptors share a port, not another router: its start fails
    with the same message as any taken port."""
    first = start_router(_archive(tmp_path / "first"))
    second = RouterProcess(tmp_path / "second", _archive(tmp_path / "second", port=first.port))
    done = _run_to_exit(second.config_path, tmp_path / "second")
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"cannot listen for DICOM on 127.0.0.1:{first.port}" in done.stderr
    assert "Address already in use" in done.stderr and "started " not in done.stderr
    assert http_get(first.metrics_port, "/readyz")[0] == 200


def test_a_program_listening_with_so_reuseport_is_not_joined(tmp_path: Path) -> None:
    router = RouterProcess(tmp_path, _archive(tmp_path))
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind((LOCALHOST, router.port))
        other.listen()
        done = _run_to_exit(router.config_path, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"cannot listen for DICOM on 127.0.0.1:{router.port}" in done.stderr
    assert "Address already in use" in done.stderr and "started " not in done.stderr


def test_a_killed_acceptors_half_received_file_goes_while_the_router_runs(
    tmp_path: Path,
) -> None:
    """kill -9 of an acceptor while a C-STORE is half sent: its file in incoming/ is deleted
    by the broker once the acceptor is gone, without waiting for the router's next start
    (which is what used to clear it); nothing else there is touched."""
    uid, body = _dataset(tmp_path / "src")
    router = RouterProcess(tmp_path / "router", _archive(tmp_path)).start()
    incoming = router.spool / "incoming"
    stranger = incoming / "kept-by-hand.dcm"  # not a name the router gives: left alone
    stranger.write_bytes(b"not ours")
    conn = _half_sent_store(router.port, uid, body)
    try:
        assert wait_for(lambda: len(list(incoming.iterdir())) == 2, timeout=15)
        [half] = [path for path in incoming.iterdir() if path != stranger]
        owner = writer_pid(half.name)
        assert router.is_child(owner)
        os.kill(owner, signal.SIGKILL)
        assert wait_for(lambda: not half.exists(), timeout=15), router.log()[-3000:]
        assert router.metric("dicom_router_dead_process_files_cleared_total",
                             folder="incoming") == 1
        assert "deleted 1 file(s) in incoming/ of a process that stopped" in router.log()
        assert list(incoming.iterdir()) == [stranger]
        assert wait_for(lambda: router.child_pid(_owner_name(router, owner)) != owner)
    finally:
        conn.close()
        router.stop()


def _owner_name(router: RouterProcess, pid: int) -> str:
    """The supervisor's name of the child that had `pid` (its log says "started NAME (pid
    PID)")."""
    found = re.search(rf"started (\S+) \(pid {pid}\)", router.log())
    assert found is not None, router.log()[-3000:]
    return found.group(1)
