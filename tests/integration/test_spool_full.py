"""A spool that fills up in the middle of a C-STORE (issue 16): the sender gets 0xA700
(Out of Resources) and may retry, instead of an A-ABORT. The spool is a small tmpfs with
the disk watermark at 0, so the write itself meets ENOSPC (needs root to mount it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.uid import CTImageStorage

from router.core.spool import Spool
from tests.dcmtk import LOCALHOST, StoreSCP, free_ports, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.router_process import ROUTER, RouterProcess, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "spool"
    mount.mkdir()
    if os.geteuid() != 0:
        # A developer's non-root run may skip it; CI must not pass without it.
        if os.environ.get("CI"):
            pytest.fail("mounting a small tmpfs needs root, and CI must run this test as root")
        pytest.skip("mounting a small tmpfs needs root (make test runs as root, as CI does)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"cannot mount a small tmpfs for the spool: {done.stderr}"
    try:
        yield mount
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_a_spool_full_mid_store_is_answered_a700(small_spool: Path, tmp_path: Path) -> None:
    config = {
        "spool": {"path": str(small_spool), "min_free_bytes": 0, "min_free_percent": 0},
        "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
    }
    large = write_instance(tmp_path / "large", sop_class=CTImageStorage,
                           transfer_syntax=EXPLICIT_VR_LE, size_bytes=8_000_000)
    small = write_instance(tmp_path / "small", sop_class=CTImageStorage,
                           transfer_syntax=EXPLICIT_VR_LE, size_bytes=10_000)
    with RouterProcess(tmp_path / "router", config) as router:
        refused = run_storescu([large], LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                               extra_args=["-d"], timeout=60)
        output = (refused.stdout + refused.stderr).lower()
        assert "0xa700" in output, output[-3000:]
        assert "abort" not in output, output[-3000:]
        assert not list((small_spool / "incoming").iterdir()), "partial file left behind"
        stored = run_storescu([small], LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert stored.returncode == 0, stored.stderr
        assert router.metric("dicom_router_instances_received_total",
                             result="out_of_resources") == 1
        router.stop()


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; the filler is returned."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    return filler


def test_a_spool_too_full_for_a_morphed_copy_waits_without_spending_attempts(
        small_spool: Path, tmp_path: Path) -> None:
    """The worker writes a morphed copy in relay/; with the disk full it cannot. Before, that
    was an `internal` failure with a traceback per try, spending attempts until the job
    became a dead letter the full disk could not take either. Now it waits (reason
    `spool_write`, one log line) and is delivered once there is room again."""
    (port,) = free_ports(1)
    pacs = StoreSCP(tmp_path / "pacs", "PACS", port=port)
    config = _morphing(small_spool, port, {"max_attempts": 2, "initial_delay": 0.1,
                                           "max_delay": 0.2})
    sources = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE, size_bytes=200_000)
               for _ in range(2)]
    with RouterProcess(tmp_path / "router", config) as router, pacs:
        filler = _queued_then_full(router, small_spool, sources)
        assert wait_for(lambda: router.metric("dicom_router_retries_total", destination="pacs",
                                              reason="spool_write") >= 6), router.log()[-3000:]
        assert router.metric_sum("dicom_router_dead_letters_total") == 0
        assert pacs.received_files() == []
        filler.unlink()
        assert wait_for(lambda: len(pacs.received_files()) == 2), router.log()[-3000:]
        router.stop()
    log = router.log()
    assert "Traceback" not in log
    said = [line for line in log.splitlines() if "cannot write in the spool" in line]
    assert 1 <= len(said) <= 2, said  # one line a minute per worker process
    assert "ENOSPC" in said[0] and str(small_spool / "relay") in said[0]
    assert not list((small_spool / "dead-letters").glob("*.json"))


def test_deliveries_waiting_for_the_spool_all_go_once_it_has_room(small_spool: Path,
                                                                   tmp_path: Path) -> None:
    """Before: each delivery the full spool refused grew the shared back-off by itself, so a
    few seconds of full disk sent most of a queue minutes away (max_delay), shown `up` with
    no reason, until an operator's `destinations retry`. Now the spell counts once, the
    wait says why, and once a probe gets its copy through every waiting delivery goes."""
    (port,) = free_ports(1)
    pacs = StoreSCP(tmp_path / "pacs", "PACS", port=port)
    config = _morphing(small_spool, port, {"initial_delay": 0.2, "max_delay": 300})
    count = 12
    sources = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE, size_bytes=20_000)
               for _ in range(count)]
    with RouterProcess(tmp_path / "router", config) as router, pacs:
        filler = _queued_then_full(router, small_spool, sources)
        assert wait_for(lambda: router.metric("dicom_router_retries_total", destination="pacs",
                                              reason="spool_write") >= count + 2), router.log()
        # Polled, not read once: a copy can slip into the space another's failed copy
        # freed, and its success releases the others, which then meet the full disk again.
        def pacs_row() -> dict[str, int | float | bool | str]:
            return dict(router.status()["broker"]["destinations"]["pacs"])

        assert wait_for(lambda: int(pacs_row()["waiting_for_spool"]) > 0, timeout=20), \
            pacs_row()
        assert pacs_row()["up"], (pacs_row(), router.log()[-4000:])

        def listed() -> str:
            return _destinations(router, "list").stdout

        assert wait_for(lambda: "waiting for the spool (spool_write)" in listed(),
                        timeout=20), listed()
        filler.unlink()
        assert wait_for(lambda: len(pacs.received_files()) == count, timeout=20), (
            router.log()[-3000:])
        assert router.metric_sum("dicom_router_dead_letters_total") == 0
        router.stop()


def test_dead_letters_the_full_spool_cannot_take_are_written_once_it_can(
        small_spool: Path, tmp_path: Path) -> None:
    """A PACS that rejects every association (a permanent failure) while the spool is full:
    before, the jobs vanished from every view until a restart (in no queue, no dead letter,
    nothing retried), and an instance linked in dead-letters/ without its record stayed."""
    (port,) = free_ports(1)
    pacs = StoreSCP(tmp_path / "pacs", "PACS", port=port, extra_args=["--refuse"])
    config = {
        "spool": {"path": str(small_spool), "min_free_bytes": 0, "min_free_percent": 0},
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": port, "retry": {"initial_delay": 0.1,
                                                          "max_delay": 0.2}}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
    }
    sources = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE, size_bytes=20_000)
               for _ in range(2)]
    letters = small_spool / "dead-letters"
    with RouterProcess(tmp_path / "router", config) as router:
        stored = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert stored.returncode == 0, stored.stderr
        filler = fill(small_spool)
        with pacs:
            assert wait_for(lambda: router.metric("dicom_router_spool_errors_total",
                                                  operation="dead_letter") >= 4), router.log()
        assert router.metric("dicom_router_dead_letters_unwritten", destination="pacs") == 2
        assert sorted(p.name for p in letters.iterdir()) == []  # no link, no temp file
        # The spool alerts send the operator to `dead-letters list`: before, "no dead letters".
        listed = subprocess.run([*ROUTER, "dead-letters", "list", "--config",
                                 str(router.config_path)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == [
            "2 dead letters wait to be written: the spool is full; the router writes them, "
            "and they are listed, once it has room", "no dead letters on the spool"]
        assert len(list((small_spool / "jobs").glob("*.dcm"))) == 2  # kept
        filler.unlink()
        assert wait_for(lambda: len(list(letters.glob("*.json"))) == 2), router.log()[-3000:]
        assert wait_for(lambda: router.metric("dicom_router_dead_letters_unwritten",
                                              destination="pacs") == 0)
        assert router.metric_sum("dicom_router_dead_letters_total") == 2
        assert wait_for(lambda: not list((small_spool / "jobs").glob("*.dcm")))
        router.stop()
    assert len(list(letters.glob("*.dcm"))) == 2
    assert router.log().count("cannot write the dead letter") == 2  # once each, not a flood


def test_replaying_dead_letters_on_a_full_spool_is_one_error_line(small_spool: Path,
                                                                   tmp_path: Path) -> None:
    """Before: a Python traceback, and a temp file left in replay/ for ever."""
    from tests.unit.helpers import make_header

    spool = Spool(small_spool).create()
    for job_id in ("0000000000000001aaaaaaaa", "0000000000000002bbbbbbbb"):
        header = make_header(job_id, ("pacs",))
        incoming = spool.incoming / f"{job_id}.part"
        incoming.write_bytes(b"the instance")
        spool.commit(header, incoming)
        spool.dead_letter(header, "pacs", {"reason": "rejected", "attempts": 1})
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "spool": {"path": str(small_spool)},
        "destinations": {"pacs": {"type": "folder", "path": str(tmp_path / "pacs")}},
        "rules": [{"name": "all", "forward": ["pacs"]}]}))
    fill(small_spool)

    done = subprocess.run([*ROUTER, "dead-letters", "replay", "--destination", "pacs",
                           "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("dicom-router: error: cannot replay 0000000000000001aaaaaaaa.pacs")
    assert "No space left on device" in line and "0 of 2 dead letters replayed" in line
    assert list(spool.replay.iterdir()) == []
    assert len(list(spool.dead_letters.glob("*.json"))) == 2  # still there to replay


def _morphing(spool: Path, port: int, retry: dict[str, float]) -> dict[str, Any]:
    """Every delivery to `pacs` (at `port`) needs a morphed copy written in the spool."""
    return {
        "spool": {"path": str(spool), "min_free_bytes": 0, "min_free_percent": 0},
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": port, "retry": retry}},
        "rules": [{"name": "all", "forward": ["pacs"], "morph": [
            {"action": "set", "tag": "InstitutionName", "value": "General Hospital"}]}],
    }


def _queued_then_full(router: RouterProcess, spool: Path, sources: list[Path]) -> Path:
    """`sources` acknowledged while an operator holds the PACS's queue, then the spool
    filled, then the queue resumed: every delivery meets the full disk with its copy, and
    none met the PACS before. The filler, to remove. (A PACS stopped instead was refused a
    delivery whenever one went before the fill, under load: down for that, rightly.)"""
    assert _destinations(router, "pause", "pacs").returncode == 0
    stored = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert stored.returncode == 0, stored.stderr
    filler = fill(spool)
    # Room for the resume's record of the paused set, not for a copy (20 KB or more).
    os.truncate(filler, filler.stat().st_size - 8192)
    resumed = _destinations(router, "resume", "pacs")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return filler


def _destinations(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, "destinations", *args, "--config", str(router.config_path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_unwritten_dead_letters_of_a_destination_no_longer_configured_are_shown(
        small_spool: Path, tmp_path: Path) -> None:
    """Jobs queued for `gone` when the router stops; it starts again without `gone` and with
    a full spool: their unknown_destination dead letters cannot be written. Before, the gauge
    and /status covered configured destinations only, so these waited unseen."""
    (closed,) = free_ports(1)  # nothing listens: gone's jobs stay queued
    keep = {"type": "folder", "path": str(tmp_path / "keep")}
    spool = {"path": str(small_spool), "min_free_bytes": 0, "min_free_percent": 0}
    before = {"spool": spool, "destinations": {
        "keep": keep, "gone": {"type": "dicom", "ae_title": "GONE", "host": "127.0.0.1",
                               "port": closed}},
        "rules": [{"name": "all", "forward": ["gone"]}]}
    after = {"spool": spool, "destinations": {"keep": keep},
             "rules": [{"name": "all", "forward": ["keep"]}]}
    sources = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE, size_bytes=20_000)
               for _ in range(2)]
    with RouterProcess(tmp_path / "before", before) as router:
        stored = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
        assert stored.returncode == 0, stored.stderr
        assert router.stop() == 0
    filler = fill(small_spool)
    router = RouterProcess(tmp_path / "after", after).launch()
    try:
        assert wait_for(lambda: _gauge(router, "gone") == 2), router.log()[-3000:]
        listed = subprocess.run([*ROUTER, "dead-letters", "list", "--config",
                                 str(router.config_path)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert listed.stdout.startswith("2 dead letters wait to be written"), listed
        filler.unlink()
        assert wait_for(lambda: len(list((small_spool / "dead-letters").glob("*.json"))) == 2)
        assert wait_for(lambda: _gauge(router, "gone") == 0)
    finally:
        router.stop()


def _gauge(router: RouterProcess, destination: str) -> float | None:
    """The unwritten dead letters' gauge, None while the router's HTTP port is not up yet."""
    try:
        return router.metric("dicom_router_dead_letters_unwritten", destination=destination)
    except OSError:
        return None
