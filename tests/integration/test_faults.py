"""Fault tests: whatever breaks, every instance a sender was told Success for arrives
byte-identical at its destination, exactly once or as a suppressed duplicate."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage

from router.core.journal import frame
from router.core.messages import JobHeader
from router.core.owned_names import writer_pid
from router.core.spool import new_job_id
from tests.dcmtk import LOCALHOST, StoreSCP, free_port, run_storescu
from tests.dicom_samples import (
    EXPLICIT_VR_LE,
    JPEG_BASELINE,
    dataset_digest,
    generate_mixed_set,
    write_instance,
)
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.router_process import ROUTER, RouterProcess, http_get, wait_for
from tests.integration.senders import BackgroundSend

pytestmark = pytest.mark.integration

FAST_RETRY = {"max_attempts": 1000, "initial_delay": 0.2, "max_delay": 1.0}


def _report(case: str, **counts: float) -> None:
    """One line per fault test with what it observed (shown with pytest -s)."""
    print(f"\nFAULT {case}: " + ", ".join(f"{k}={v:g}" for k, v in counts.items()))


def _delivered(router: RouterProcess, destination: str) -> float:
    return router.metric("dicom_router_instances_forwarded_total", destination=destination,
                         result="delivered")


def _digests(paths: list[Path]) -> set[str]:
    return {dataset_digest(p) for p in paths}


def _pacs_config(scp: StoreSCP, **extra: Any) -> dict[str, Any]:
    return {"destinations": {"pacs": {**dicom_destination(scp), "retry": FAST_RETRY}},
            "rules": [{"name": "all", "forward": ["pacs"]}], **extra}


def _assert_all_arrived(router: RouterProcess, scp: StoreSCP, sent: list[Path]) -> None:
    jobs = router.spool / "jobs"
    assert wait_for(lambda: not any(jobs.glob("*.dcm")), timeout=120), (
        f"{len(list(jobs.glob('*.dcm')))} jobs still queued\n{router.log()[-3000:]}")
    missing = _digests(sent) - _digests(scp.received_files())
    assert not missing, f"{len(missing)} acknowledged instances never arrived"


def _single_scp(tmp_path: Path, ae: str, port: int | None = None) -> StoreSCP:
    """A storescp without --fork: one association at a time, like many real PACS."""
    return StoreSCP(tmp_path / ae, ae, port=port)


def test_worker_killed_mid_send_loses_nothing(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 1000, size_bytes=4_000)
    with _single_scp(tmp_path, "PACS") as pacs:
        router = start_router(_pacs_config(pacs, workers=2))
        send = BackgroundSend(sources, router.port)
        send.start()
        assert wait_for(lambda: _delivered(router, "pacs") >= 100, timeout=60)
        victim = router.child_pid("worker-0")
        os.kill(victim, signal.SIGKILL)
        send.join(240)

        acknowledged = send.acknowledged()
        assert len(acknowledged) == len(sources), send.output[-2000:]
        _assert_all_arrived(router, pacs, acknowledged)
        assert wait_for(lambda: router.child_pid("worker-0") != victim), "worker not restarted"
        assert router.metric("dicom_router_process_restarts_total", process="worker") == 1
        # Sends beyond one per instance are the duplicates the router could not suppress:
        # at most the delivery each of the dead worker's threads was in the middle of (the
        # jobs a run had finished are in the ledger and count as suppressed, not sent). (No
        # lower bound: the worker may die after its ledger record and before its counter;
        # _assert_all_arrived checked delivery.)
        sends = _delivered(router, "pacs")
        assert sends <= len(sources) + 4
        _report("worker kill -9", acknowledged=len(acknowledged), sends=sends,
                suppressed=router.metric_sum("dicom_router_duplicates_suppressed_total",
                                         destination="pacs"),
                leases_expired=router.metric("dicom_router_leases_expired_total"))


def _samples(router: RouterProcess, name: str, **labels: str) -> list[float]:
    """Every value /metrics shows for `name` with exactly these labels (none: absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return [float(line.rpartition(" ")[2]) for line in router.metrics().splitlines()
            if line.startswith(f"{name}{{{want}}} ")]


def test_a_dead_brokers_gauges_go_with_it(start_router: RouterFactory, tmp_path: Path) -> None:
    """kill -9 of the broker, then its destination goes down: /metrics says down, as /status
    does. The broker's gauges were in multiprocess mode "max", whose files outlive their
    process: the dead broker's destination_up 1 won over the new broker's 0 for ever."""
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    with _single_scp(tmp_path, "PACS") as pacs:
        router = start_router(_pacs_config(pacs))

        def up() -> list[float]:
            return _samples(router, "dicom_router_destination_up", destination="pacs")

        assert wait_for(lambda: up() == [1.0]), router.metrics()
        broker = router.child_pid("broker")
        os.kill(broker, signal.SIGKILL)
        assert wait_for(lambda: router.child_pid("broker") != broker), router.log()[-3000:]
        router.await_ready()
    assert run_storescu([source], LOCALHOST, router.port,
                        called_ae="DICOM-ROUTER").returncode == 0
    assert wait_for(lambda: not router.status()["broker"]["destinations"]["pacs"]["up"],
                    timeout=60), router.log()[-3000:]
    assert wait_for(lambda: up() == [0.0]), router.metrics()


def test_a_killed_workers_copy_in_relay_goes_and_its_job_arrives_later(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """kill -9 of a worker holding a morphed copy of a job (in relay/) while the destination
    does not answer: the broker deletes the copy once the worker is gone, as it does a dead
    acceptor's files in incoming/ (before, it stayed until the router's next start); the job
    is not touched and arrives, morphed, once the PACS serves."""
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    silent = socket.create_server((LOCALHOST, 0))  # takes the connection, never answers
    port = silent.getsockname()[1]
    pacs = {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST, "port": port,
            "acse_timeout": 60, "retry": FAST_RETRY,
            "morph": [{"action": "set", "tag": "InstitutionName", "value": "Router General"}]}
    router = start_router({"destinations": {"pacs": pacs},
                           "rules": [{"name": "all", "forward": ["pacs"]}]})
    relay = router.spool / "relay"
    try:
        assert run_storescu([source], LOCALHOST, router.port,
                            called_ae="DICOM-ROUTER").returncode == 0
        assert wait_for(lambda: any(relay.iterdir()), timeout=15), router.log()[-3000:]
        [copy] = list(relay.iterdir())
        owner = writer_pid(copy.name)
        assert owner is not None and router.is_child(owner)
        os.kill(owner, signal.SIGKILL)
        assert wait_for(lambda: not copy.exists(), timeout=15), router.log()[-3000:]
        assert router.metric("dicom_router_dead_process_files_cleared_total",
                             folder="relay") == 1
        assert "deleted 1 file(s) in relay/ of a process that stopped" in router.log()
    finally:
        silent.close()
    with _single_scp(tmp_path, "PACS", port=port) as scp:
        assert wait_for(lambda: len(scp.received_files()) == 1, timeout=60), router.log()[-3000:]
        [arrived] = scp.received_files()
        assert dcmread(arrived).InstitutionName == "Router General"
    assert wait_for(lambda: not any(relay.iterdir()), timeout=15)  # the new copy went too


def test_broker_killed_mid_send_loses_nothing(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 400, size_bytes=4_000)
    with _single_scp(tmp_path, "PACS") as pacs:
        router = start_router(_pacs_config(pacs))
        send = BackgroundSend(sources, router.port)
        send.start()
        assert wait_for(lambda: _delivered(router, "pacs") >= 50, timeout=60)
        victim = router.child_pid("broker")
        os.kill(victim, signal.SIGKILL)
        send.join(240)

        acknowledged = send.acknowledged()
        _assert_all_arrived(router, pacs, acknowledged)
        assert router.child_pid("broker") != victim
        assert router.metric("dicom_router_process_restarts_total", process="broker") == 1
        # Submits in flight are re-sent to the restarted broker: no sender is turned away.
        assert len(acknowledged) == len(sources), send.output[-2000:]
        _report("broker kill -9", acknowledged=len(acknowledged),
                recovered=router.metric("dicom_router_recovered_jobs_total"),
                arrived=len(_digests(pacs.received_files())))


def test_router_killed_mid_send_recovers_every_acknowledged_instance(
    tmp_path: Path,
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 300, size_bytes=4_000)
    port = free_port()
    router = RouterProcess(tmp_path / "r", {"destinations": {"pacs": {
        "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": port,
        "retry": FAST_RETRY}}, "rules": [{"name": "all", "forward": ["pacs"]}]}).start()
    try:
        send = BackgroundSend(sources, router.port)
        send.start()  # the destination is down: everything acknowledged waits on the spool
        assert wait_for(lambda: router.metric("dicom_router_instances_received_total",
                                              result="accepted") >= 100, timeout=60)
        router.kill_all()
        send.join(120)
        acknowledged = send.acknowledged()
        assert 100 <= len(acknowledged) < len(sources)

        with _single_scp(tmp_path, "PACS", port) as pacs:
            router.start()  # same spool, same ports
            _assert_all_arrived(router, pacs, acknowledged)
            assert router.metric("dicom_router_recovered_jobs_total") >= len(acknowledged)
            _report("router kill -9 + restart", sent=len(sources),
                    acknowledged=len(acknowledged),
                    recovered=router.metric("dicom_router_recovered_jobs_total"),
                    arrived=len(_digests(pacs.received_files())))
            assert "half-received" in router.log() or not any(
                (router.spool / "incoming").iterdir())
    finally:
        router.stop()


def test_destination_down_for_a_while_then_back(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 40)
    port = free_port()
    router = start_router({"destinations": {"pacs": {
        "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": port,
        "retry": FAST_RETRY}}, "rules": [{"name": "all", "forward": ["pacs"]}]})
    sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert sent.returncode == 0, sent.stderr
    assert wait_for(lambda: router.metric("dicom_router_retries_total", destination="pacs",
                                          reason="connection") >= 10)
    with _single_scp(tmp_path, "PACS", port) as pacs:
        _assert_all_arrived(router, pacs, sources)
        _report("destination down, then back", acknowledged=len(sources),
                retries=router.metric("dicom_router_retries_total", destination="pacs",
                                      reason="connection"),
                arrived=len(_digests(pacs.received_files())))


def test_refusing_destination_does_not_hold_up_the_other(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 30)
    with _single_scp(tmp_path, "GOOD") as good, \
            StoreSCP(tmp_path / "BAD", "BAD", extra_args=["--refuse"]) as bad:
        router = start_router({
            "destinations": {
                "good": dicom_destination(good),
                "bad": {**dicom_destination(bad),
                        "retry": {"max_attempts": 2, "initial_delay": 0.1, "max_delay": 0.2}},
            },
            "rules": [{"name": "both", "forward": ["good", "bad"]}],
        })
        sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: _delivered(router, "good") == len(sources))
        assert _digests(good.received_files()) == _digests(sources)
        assert wait_for(lambda: len(_dead_letter_ids(router, "bad")) == len(sources))
        _assert_all_arrived(router, good, sources)  # settled: nothing left on the spool
        assert bad.received_files() == []
        _report("one destination refusing", acknowledged=len(sources),
                good_arrived=len(good.received_files()),
                bad_dead_letters=len(_dead_letter_ids(router, "bad")))


def _cli(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, "dead-letters", "--config", str(router.config_path), *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=router.workdir)


def _dead_letter_ids(router: RouterProcess, destination: str) -> list[str]:
    listed = _cli(router, "list", "--destination", destination, "--json")
    return [line for line in listed.stdout.splitlines() if line.startswith("{")]


def test_rejected_transfer_syntax_is_dead_lettered_then_replayed_elsewhere(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    jpeg = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                          transfer_syntax=JPEG_BASELINE)
    plain = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                           transfer_syntax=EXPLICIT_VR_LE)
    # "+x=" after "+xa": this storescp accepts uncompressed syntaxes only.
    with StoreSCP(tmp_path / "STRICT", "STRICT", extra_args=["+x="]) as strict, \
            _single_scp(tmp_path, "LENIENT") as lenient:
        router = start_router({
            "destinations": {"strict": dicom_destination(strict),
                             "lenient": dicom_destination(lenient)},
            "rules": [{"name": "all", "forward": ["strict"]}],
        })
        sent = run_storescu([jpeg, plain], LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: len(_dead_letter_ids(router, "strict")) == 1)
        assert wait_for(lambda: _delivered(router, "strict") == 1)
        # Refused at negotiation, then not transcodable either: write_instance's JPEG
        # fragments are random bytes that no codec decodes.
        listed = _cli(router, "list")
        assert "transcode" in listed.stdout and "1 dead letters" in listed.stdout, listed.stdout
        assert "cannot decode JPEG Baseline" in listed.stdout
        assert router.metric("dicom_router_dead_letters_total", destination="strict",
                             reason="transcode") == 1

        replayed = _cli(router, "replay", "--reason", "transcode", "--to", "lenient")
        assert replayed.returncode == 0, replayed.stderr
        assert wait_for(lambda: _delivered(router, "lenient") == 1), router.log()[-2000:]
        assert _digests(lenient.received_files()) == {dataset_digest(jpeg)}
        assert _digests(strict.received_files()) == {dataset_digest(plain)}
        assert "no dead letters" in _cli(router, "list").stdout
        _report("transfer syntax rejected, replayed", dead_letters=1, replayed=1,
                arrived_lenient=len(lenient.received_files()))


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs for the spool, so that its watermark is reached for real."""
    mount = tmp_path / "small-spool"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"cannot mount a tmpfs (run the suite as root): {done.stderr}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_spool_watermark_refuses_with_a700_then_recovers(
    small_spool: Path, tmp_path: Path, start_router: RouterFactory
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 40, size_bytes=500_000)  # ~20 MB
    port = free_port()
    router = start_router({
        "spool": {"path": str(small_spool), "min_free_bytes": 30 * 1024**2,
                  "min_free_percent": 0},
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": port, "retry": FAST_RETRY}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
    })
    first = BackgroundSend(sources, router.port)
    first.start()
    first.join(120)
    accepted = first.acknowledged()
    assert 0 < len(accepted) < len(sources), first.output[-2000:]
    assert "Refused: OutOfResources" in first.output
    assert router.metric("dicom_router_refusals_total", reason="disk_watermark") >= 1
    assert wait_for(lambda: http_get(router.metrics_port, "/readyz")[0] == 503)
    assert "watermark" in http_get(router.metrics_port, "/readyz")[1]
    # A new association is turned away with "temporary congestion" while full.
    refused = run_storescu(sources[-1:], LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr

    with _single_scp(tmp_path, "PACS", port) as pacs:
        _assert_all_arrived(router, pacs, accepted)  # draining frees the spool
        assert wait_for(lambda: http_get(router.metrics_port, "/readyz")[0] == 200)
        rest = [p for p in sources if p not in accepted]
        # As a modality does: send what is left, and again what got 0xA700, until all is
        # taken (the spool holds ~20 instances: with the PACS draining it, the rest may
        # reach the watermark again).
        pending, rounds, refused_again = list(rest), 0, 0
        while pending and rounds < 30:
            rounds += 1
            again = BackgroundSend(pending, router.port)
            again.run()
            refused_again += again.output.count("Refused: OutOfResources")
            taken = set(again.acknowledged())
            pending = [p for p in pending if p not in taken]
            if pending:
                time.sleep(0.5)
        assert not pending, f"{len(pending)} never acknowledged after {rounds} rounds"
        _assert_all_arrived(router, pacs, sources)
        _report("spool watermark", first_pass_acknowledged=len(accepted),
                refused_a700=first.output.count("Refused: OutOfResources"),
                second_pass=len(rest), second_pass_rounds=rounds,
                second_pass_refused=refused_again,
                arrived=len(_digests(pacs.received_files())))


def test_sigterm_during_send_keeps_acknowledged_jobs_for_the_restart(tmp_path: Path) -> None:
    sources = generate_mixed_set(tmp_path / "src", 300, size_bytes=4_000)
    port = free_port()
    router = RouterProcess(tmp_path / "r", {
        "drain_grace": 5,
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": port, "retry": FAST_RETRY}},
        "rules": [{"name": "all", "forward": ["pacs"]}]}).start()
    try:
        send = BackgroundSend(sources, router.port)
        send.start()
        assert wait_for(lambda: router.metric("dicom_router_instances_received_total",
                                              result="accepted") >= 50, timeout=60)
        assert router.stop() == 0, router.log()[-2000:]
        send.join(120)
        acknowledged = send.acknowledged()
        assert len(acknowledged) >= 50
        queued = list((router.spool / "jobs").glob("*.dcm"))
        assert len(queued) == len(acknowledged)  # all kept, nothing half-kept

        with _single_scp(tmp_path, "PACS", port) as pacs:
            router.start()
            _assert_all_arrived(router, pacs, acknowledged)
            _report("SIGTERM during send", sent=len(sources), acknowledged=len(acknowledged),
                    kept_on_spool=len(queued), arrived=len(_digests(pacs.received_files())))
    finally:
        router.stop()




def test_router_killed_during_parallel_sends_recovers_every_acknowledged_instance(
    tmp_path: Path,
) -> None:
    """Four storescu associations at once, so their commits share journal syncs (group
    commit), while the destination takes deliveries (jobs are removed and journal segments
    trimmed meanwhile); kill -9 of every router process mid-send, then a restart on the same
    spool: every instance a sender was told Success for arrives, none is left queued."""
    sources = generate_mixed_set(tmp_path / "src", 800, size_bytes=4_000)
    shares = [sources[i::4] for i in range(4)]
    port = free_port()
    with _single_scp(tmp_path, "PACS", port) as pacs:
        router = RouterProcess(tmp_path / "r", _pacs_config(pacs)).start()
        try:
            sends = [BackgroundSend(share, router.port) for share in shares]
            for send in sends:
                send.start()
            assert wait_for(lambda: router.metric("dicom_router_instances_received_total",
                                                  result="accepted") >= 200, timeout=60)
            accepted = router.metric("dicom_router_instances_received_total", result="accepted")
            syncs = router.metric("dicom_router_spool_group_syncs_total")
            router.kill_all()
            for send in sends:
                send.join(120)
            acknowledged = [path for send in sends for path in send.acknowledged()]
            assert 200 <= len(acknowledged) < len(sources)
            assert all(send.acknowledged() for send in sends)  # all four were sending

            router.start()  # same spool, same ports
            _assert_all_arrived(router, pacs, acknowledged)
            assert not any((router.spool / "incoming").iterdir())
            _report("router kill -9 during 4 parallel sends", sent=len(sources),
                    acknowledged=len(acknowledged), accepted_before_kill=accepted,
                    group_syncs_before_kill=syncs,
                    recovered=router.metric("dicom_router_recovered_jobs_total"),
                    arrived=len(_digests(pacs.received_files())))
        finally:
            router.stop()


def test_a_job_a_dead_acceptor_never_handed_over_arrives_without_a_restart(
        tmp_path: Path) -> None:
    """What kill -9 of an acceptor between its commit and its submit leaves (too short a
    window to hit with a signal, so it is laid down by hand): the instance in jobs/ and its
    record in a journal segment named after a process that is gone. The running broker
    queues it within seconds (router/broker/orphans.py), the destination gets it, and the
    segment is deleted once the job has left the spool."""
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    with _single_scp(tmp_path, "PACS") as pacs:
        router = RouterProcess(tmp_path / "r", _pacs_config(pacs)).start()
        try:
            gone = subprocess.Popen(["true"])  # after the router's processes took their pids
            gone.wait()
            meta = read_file_meta_info(source)
            job_id = new_job_id()
            header = JobHeader(
                job_id=job_id, calling_ae="MODALITY", called_ae="DICOM-ROUTER",
                peer_address="127.0.0.1", peer_port=40000,
                sop_class_uid=str(meta.MediaStorageSOPClassUID),
                sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
                transfer_syntax_uid=str(meta.TransferSyntaxUID), size=source.stat().st_size,
                received_at=time.time(), rules=("all",), destinations=("pacs",))
            segment = router.spool / "journal" / f"{gone.pid}-0a0b0c0d-000001.log"
            shutil.copyfile(source, router.spool / "jobs" / f"{job_id}.dcm")
            segment.write_bytes(frame(json.dumps(header.to_dict()).encode()))
            assert wait_for(lambda: _digests([source]) <= _digests(pacs.received_files()),
                            timeout=60), router.log()[-3000:]
            assert "queued 1 job(s) from journal" in router.log()
            assert router.metric("dicom_router_recovered_jobs_total") == 1
            assert wait_for(lambda: not segment.exists(), timeout=30)
        finally:
            router.stop()


def test_acceptor_killed_during_parallel_sends_loses_nothing(tmp_path: Path) -> None:
    """kill -9 of the acceptor alone while four associations commit together: the
    supervisor restarts it, every acknowledged instance arrives, and at the next start the
    dead acceptor's journal segment is compacted away once its jobs are recovered."""
    sources = generate_mixed_set(tmp_path / "src", 600, size_bytes=4_000)
    with _single_scp(tmp_path, "PACS") as pacs:
        router = RouterProcess(tmp_path / "r", _pacs_config(pacs)).start()
        try:
            sends = [BackgroundSend(sources[i::4], router.port) for i in range(4)]
            for send in sends:
                send.start()
            assert wait_for(lambda: router.metric("dicom_router_instances_received_total",
                                                  result="accepted") >= 150, timeout=60)
            victim = router.child_pid("acceptor-1")
            os.kill(victim, signal.SIGKILL)
            for send in sends:
                send.join(120)
            acknowledged = [path for send in sends for path in send.acknowledged()]
            assert len(acknowledged) >= 150
            assert wait_for(lambda: router.child_pid("acceptor-1") != victim), "not restarted"
            wanted = _digests(acknowledged)
            assert wait_for(lambda: wanted <= _digests(pacs.received_files()), timeout=120), (
                f"{len(wanted - _digests(pacs.received_files()))} acknowledged instances "
                f"never arrived\n{router.log()[-3000:]}")

            # A commit the acceptor finished but never handed to the broker (its sender was
            # not told Success) is queued by the broker once it sees the acceptor gone
            # (test_a_job_a_dead_acceptor_never_handed_over_arrives_without_a_restart); the
            # next start finds nothing lost either.
            assert router.stop() == 0
            router.start()
            _assert_all_arrived(router, pacs, acknowledged)
            assert len(list((router.spool / "journal").glob("*.log"))) <= 1  # compacted
            _report("acceptor kill -9 during 4 parallel sends", sent=len(sources),
                    acknowledged=len(acknowledged),
                    recovered=router.metric("dicom_router_recovered_jobs_total"),
                    arrived=len(_digests(pacs.received_files())))
        finally:
            router.stop()


def test_a_stopping_worker_waits_dimse_timeout_in_all_not_per_delivery_thread(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """SIGTERM while six delivery threads wait on destinations that never answer: the worker
    gives its threads listen.dimse_timeout together, then reports and leaves, within the
    supervisor's grace (drain_grace + dimse_timeout + 5). Joined one by one, dimse_timeout
    each, they took six times as long: the supervisor killed the worker, and in Kubernetes
    terminationGracePeriodSeconds ran out."""
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    names = [f"silent{i}" for i in range(6)]
    with contextlib.ExitStack() as stack:
        silent = [stack.enter_context(socket.create_server((LOCALHOST, 0))) for _ in names]
        destinations = {name: {"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                               "port": server.getsockname()[1], "acse_timeout": 60}
                        for name, server in zip(names, silent, strict=True)}
        # dimse_timeout past the broker's worker lease (6 s): the stopping worker must go on
        # beating, or the broker takes it for dead and requeues its deliveries beside it.
        router = start_router({"listen": {"dimse_timeout": 7}, "drain_grace": 0, "workers": 1,
                               "worker_threads": 6, "destinations": destinations,
                               "rules": [{"name": "all", "forward": names}]})
        assert run_storescu([source], LOCALHOST, router.port,
                            called_ae="DICOM-ROUTER").returncode == 0
        assert wait_for(lambda: router.metric_sum("dicom_router_deliveries_in_flight") == 6,
                        timeout=30), router.metrics()
        router.stop()
    assert "worker-0 did not stop within" not in router.log(), router.log()[-3000:]
    assert "missed its heartbeats" not in router.log(), router.log()[-3000:]
