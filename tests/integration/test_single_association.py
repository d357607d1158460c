"""Destinations that serve one association at a time, and re-sends that must arrive.

Many PACS, workstations and gateways serve one association at a time: DCMTK's storescp without
--fork leaves a second association unanswered in its TCP backlog, a pynetdicom SCP with
maximum_associations = 1 rejects it ("local limit exceeded"). The router must learn that,
deliver everything through the one association, and report what it learned. A deliberate
re-send (the same bytes from a new association) is new work and must arrive again.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from tests.dcmtk import LOCALHOST, StoreSCP, free_port, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, dataset_digest, generate_mixed_set, write_instance
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.router_process import ROUTER, RouterProcess, wait_for
from tests.integration.senders import BackgroundSend

pytestmark = pytest.mark.integration

FAST_RETRY = {"max_attempts": 1000, "initial_delay": 0.2, "max_delay": 1.0}
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def _config(destination: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"destinations": {"pacs": {**destination, "retry": FAST_RETRY, **extra}},
            "rules": [{"name": "all", "forward": ["pacs"]}]}


def _digests(paths: list[Path]) -> set[str]:
    return {dataset_digest(p) for p in paths}


def _drained(router: RouterProcess) -> bool:
    return not any((router.spool / "jobs").glob("*.dcm"))


def _gauge(router: RouterProcess) -> float:
    return router.metric("dicom_router_destination_concurrency", destination="pacs")


def _learned(router: RouterProcess) -> int:
    return int(router.status()["broker"]["destinations"]["pacs"]["concurrency"])


def _send_from(senders: int, files: list[Path], port: int) -> list[Path]:
    """`senders` concurrent storescu runs sharing the files; what each was told Success for."""
    shares = [files[i::senders] for i in range(senders)]
    sends = [BackgroundSend(share, port) for share in shares]
    for send in sends:
        send.start()
    for send in sends:
        send.join(300)
    acknowledged = [path for send in sends for path in send.acknowledged()]
    assert len(acknowledged) == len(files), sends[0].output[-2000:]
    return acknowledged


@pytest.mark.parametrize("senders", [1, 4])
def test_storescp_without_fork_gets_everything(
    start_router: RouterFactory, tmp_path: Path, senders: int
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 300, size_bytes=4_000)
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:  # no --fork: one association at a time
        router = start_router(_config(dicom_destination(pacs)))
        acknowledged = _send_from(senders, sources, router.port)
        assert wait_for(lambda: _drained(router), timeout=180), router.log()[-3000:]
        assert _digests(acknowledged) <= _digests(pacs.received_files())
        assert router.metric_sum("dicom_router_dead_letters_total") == 0
        assert router.metric("dicom_router_retries_total", destination="pacs",
                             reason="aborted") == 0
        print(f"\nONE-ASSOCIATION storescp, {senders} sender(s): arrived "
              f"{len(_digests(pacs.received_files()))}, busy retries "
              f"{router.metric('dicom_router_retries_total', destination='pacs', reason='busy')}"
              f", learned {router.status()['broker']['destinations']['pacs']['concurrency']}")


def test_the_learned_limit_is_reported(start_router: RouterFactory, tmp_path: Path) -> None:
    """A queue built while the destination was down, then a storescp without --fork: the
    router tries a second association, finds it busy, and settles on one. (One transfer
    syntax, so that no association is released to negotiate a context it lacks.)"""
    sources = generate_mixed_set(tmp_path / "src", 200, size_bytes=4_000,
                                 syntaxes=(ExplicitVRLittleEndian,))
    port = free_port()
    # The default timeouts: the probe's wait (busy_timeout) is shorter than the first
    # association's idle time, so the probe meets a busy destination even when the queue is
    # gone by then (with the defaults of before, 3 s against 2 s, it did not).
    router = start_router(_config({"type": "dicom", "ae_title": "PACS", "host": LOCALHOST,
                                   "port": port}))
    sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert sent.returncode == 0, sent.stderr
    with StoreSCP(tmp_path / "PACS", "PACS", port=port) as pacs:
        assert wait_for(lambda: _drained(router), timeout=180), router.log()[-3000:]
        assert _digests(sources) <= _digests(pacs.received_files())
    # A probe for a second association may still be waiting for its busy answer when the queue
    # is empty. The gauge is set the moment the limit changes; /status shows the broker's
    # snapshot, written once a heartbeat, so it may lag the gauge by one.
    assert wait_for(lambda: _gauge(router) == 1, timeout=10), _gauge(router)
    assert wait_for(lambda: _learned(router) == 1, timeout=10), _learned(router)
    busy = router.metric("dicom_router_retries_total", destination="pacs", reason="busy")
    assert busy >= 1
    # Counted as busy, not as a failed delivery (it spends no attempt).
    assert router.metric("dicom_router_instances_forwarded_total", destination="pacs",
                         result="busy") == busy
    assert "destination pacs is busy (refused one more association)" in router.log()
    assert router.metric_sum("dicom_router_dead_letters_total") == 0


class LimitedSCP:
    """A pynetdicom storage SCP that takes one association and rejects a second one
    (A-ASSOCIATE-RJ transient, "local limit exceeded"); stores what it gets as Part 10."""

    def __init__(self, folder: Path, syntaxes: list[str] = SYNTAXES) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.port = free_port()
        self.rejected = 0
        self.accepted = 0
        self.lock = threading.Lock()
        self.ae = AE(ae_title="LIMITED")
        self.ae.maximum_associations = 1
        self.ae.maximum_pdu_size = 256 * 1024
        for context in StoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, syntaxes)
        self.ae.add_supported_context(Verification)

    def _store(self, event: Any) -> int:
        uid = event.request.AffectedSOPInstanceUID
        (self.folder / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    def _rejected(self, event: Any) -> None:
        with self.lock:
            self.rejected += 1

    def _accepted(self, event: Any) -> None:
        with self.lock:
            self.accepted += 1

    def __enter__(self) -> LimitedSCP:
        self.server = self.ae.start_server(
            (LOCALHOST, self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_REJECTED, self._rejected),
                          (evt.EVT_ACCEPTED, self._accepted)])
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@pytest.fixture
def limited_scp(tmp_path: Path) -> Iterator[LimitedSCP]:
    with LimitedSCP(tmp_path / "LIMITED") as scp:
        yield scp


def test_an_implicit_only_scp_with_one_association_is_sent_implicit_on_one_association(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """A PACS taking Implicit VR only and one association (pynetdicom, maximum_associations
    1): each Explicit instance used to cost a new association (the open one had refused
    Explicit, so it was released and Explicit asked for again), and the new one, answered
    before the PACS had freed its slot, came back "busy": three instances a second. The
    refusal is remembered per association: the fallback syntax goes on the open one."""
    sources = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE, size_bytes=3_000)
               for _ in range(30)]
    with LimitedSCP(tmp_path / "IMPLICIT", [ImplicitVRLittleEndian]) as implicit:
        router = start_router(_config({"type": "dicom", "ae_title": "LIMITED",
                                       "host": LOCALHOST, "port": implicit.port}))
        _send_from(1, sources, router.port)
        assert wait_for(lambda: _drained(router), timeout=120), router.log()[-3000:]
        received = list(implicit.folder.iterdir())
        assert {p.stem for p in received} == {dcmread(p).SOPInstanceUID for p in sources}
        # The first association learns the refusal; a probe or an idle release may add one
        # or two more, never one per instance.
        assert implicit.accepted <= 4, (implicit.accepted, router.log()[-3000:])
        assert router.metric("dicom_router_retries_total", destination="pacs",
                             reason="busy") <= 2


def test_pynetdicom_scp_with_one_association_gets_everything(
    start_router: RouterFactory, tmp_path: Path, limited_scp: LimitedSCP
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 200, size_bytes=4_000,
                                 syntaxes=tuple(SYNTAXES))
    destination = {"type": "dicom", "ae_title": "LIMITED", "host": LOCALHOST,
                   "port": limited_scp.port}
    router = start_router(_config(destination))
    acknowledged = _send_from(4, sources, router.port)
    assert wait_for(lambda: _drained(router), timeout=180), router.log()[-3000:]
    assert _digests(acknowledged) <= _digests(list(limited_scp.folder.iterdir()))
    # A late probe's rejection may lower the limit just after the queue is empty.
    assert wait_for(lambda: _gauge(router) == 1, timeout=10), _gauge(router)
    assert router.metric("dicom_router_dead_letters_total", destination="pacs",
                         reason="rejected") == 0


def test_max_associations_pins_the_limit(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 60, size_bytes=4_000)
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        router = start_router(_config(dicom_destination(pacs), max_associations=1))
        acknowledged = _send_from(2, sources, router.port)
        assert wait_for(lambda: _drained(router), timeout=120), router.log()[-3000:]
        assert _digests(acknowledged) <= _digests(pacs.received_files())
        # Pinned: never tried a second association, so never found it busy.
        assert router.metric("dicom_router_retries_total", destination="pacs",
                             reason="busy") == 0
        assert router.metric("dicom_router_destination_concurrency", destination="pacs") == 1


def test_router_killed_mid_send_to_a_one_association_destination(tmp_path: Path) -> None:
    sources = generate_mixed_set(tmp_path / "src", 200, size_bytes=4_000)
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        router = RouterProcess(tmp_path / "r", _config(dicom_destination(pacs))).start()
        try:
            send = BackgroundSend(sources, router.port)
            send.start()
            assert wait_for(lambda: router.metric("dicom_router_instances_forwarded_total",
                                                  destination="pacs", result="delivered") >= 50,
                            timeout=60)
            router.kill_all()
            send.join(120)
            acknowledged = send.acknowledged()
            assert acknowledged
            router.start()  # same spool: recovers what was acknowledged and not delivered
            assert wait_for(lambda: _drained(router), timeout=180), router.log()[-3000:]
            assert _digests(acknowledged) <= _digests(pacs.received_files())
        finally:
            router.stop()


# --- re-sends ------------------------------------------------------------------------------


def test_a_resend_after_the_destination_lost_everything_arrives_again(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 30, size_bytes=4_000)
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        router = start_router(_config(dicom_destination(pacs)))
        for _ in range(2):
            sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
            assert sent.returncode == 0, sent.stderr
            assert wait_for(lambda: len(pacs.received_files()) >= len(sources), timeout=60), \
                router.log()[-3000:]
            assert _digests(pacs.received_files()) == _digests(sources)
            shutil.rmtree(pacs.output_dir)  # the PACS loses everything
            pacs.output_dir.mkdir()
        assert router.metric_sum("dicom_router_duplicates_suppressed_total") == 0


def test_on_duplicate_skip_suppresses_a_resend_and_counts_it(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 30, size_bytes=4_000)
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        router = start_router(_config(dicom_destination(pacs), on_duplicate="skip"))
        sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: len(pacs.received_files()) >= len(sources), timeout=60)
        shutil.rmtree(pacs.output_dir)
        pacs.output_dir.mkdir()
        again = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert again.returncode == 0, again.stderr
        assert wait_for(lambda: router.metric(
            "dicom_router_duplicates_suppressed_total", destination="pacs",
            policy="skip") == len(sources), timeout=60), router.log()[-3000:]
        assert wait_for(lambda: _drained(router), timeout=30)
        assert pacs.received_files() == []


@pytest.mark.parametrize("killed", [False, True], ids=["running", "after-kill-9"])
def test_a_corrected_version_ends_at_the_pacs_even_when_it_is_urgent_and_the_first_is_not(
    start_router: RouterFactory, tmp_path: Path, killed: bool
) -> None:
    """v1 from a routine rule (priority low), then v2 of the same instances from a stat rule
    (urgent), both queued while the PACS is paused: urgent work jumps the queue, yet each
    instance's v2 must arrive after its v1, or the PACS keeps the version nobody wants. The
    same after kill -9 and a restart (the queue is rebuilt from the spool)."""
    uids = [generate_uid() for _ in range(12)]

    def version(name: str) -> list[Path]:
        return [write_instance(tmp_path / name, sop_class=CTImageStorage,
                               transfer_syntax=EXPLICIT_VR_LE, size_bytes=4_000,
                               sop_instance_uid=uid, tags={"PatientName": f"DOE^{name}"})
                for uid in uids]

    first, second = version("FIRST"), version("CORRECTED")
    config = {"destinations": {"pacs": {}}, "rules": [
        {"name": "routine", "match": {"calling_ae": "ROUTINE"}, "forward": ["pacs"],
         "priority": "low"},
        {"name": "stat", "match": {"calling_ae": "STAT"}, "forward": ["pacs"],
         "priority": "urgent"}]}
    with StoreSCP(tmp_path / "PACS", "PACS") as pacs:
        config["destinations"]["pacs"] = {**dicom_destination(pacs), "retry": FAST_RETRY}
        router = start_router(config)
        paused = subprocess.run([*ROUTER, "destinations", "--config", str(router.config_path),
                                 "pause", "pacs"], capture_output=True, text=True, timeout=60)
        assert paused.returncode == 0, paused.stderr
        for files, calling in ((first, "ROUTINE"), (second, "STAT")):
            sent = run_storescu(files, LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                                calling_ae=calling)
            assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: router.status()["broker"]["destinations"]["pacs"].get("depth")
                        == 24, timeout=30), router.status()
        if killed:
            router.kill_all()
            router.start()  # the pause is on the spool too: nothing leaves before resume
        resumed = subprocess.run([*ROUTER, "destinations", "--config", str(router.config_path),
                                  "resume", "pacs"], capture_output=True, text=True, timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        assert wait_for(lambda: _drained(router), timeout=60), router.log()[-3000:]
        kept = {str(dcmread(p).SOPInstanceUID): str(dcmread(p).PatientName)
                for p in pacs.received_files()}
    assert kept == dict.fromkeys(uids, "DOE^CORRECTED")
