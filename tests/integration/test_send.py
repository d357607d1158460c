"""`dicom-router send` as an operator runs it, against real DCMTK storescp peers and routers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    EnhancedMRImageStorage,
    MRImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    XRayAngiographicImageStorage,
)

from router.cli import send_files
from router.cli.send_association import parse_address
from tests.dcmtk import StoreSCP, free_port
from tests.dicom_samples import (
    ALL_SYNTAXES,
    EXPLICIT_VR_LE,
    MIXED_KINDS,
    dataset_digest,
    generate_mixed_set,
    write_instance,
)
from tests.integration.conftest import RouterFactory
from tests.integration.router_process import ROUTER, wait_for
from tests.pki import CertificateAuthority
from tests.slow_link import SlowLink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

StoreSCPFactory = Callable[[str], StoreSCP]
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.9999.1"  # no storescp knows it


def _send(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # capture_output: stderr is not a terminal, so no progress bar, plain text only.
    return subprocess.run([*ROUTER, "send", *map(str, args)], capture_output=True, text=True,
                          timeout=150, check=False)


def _counts(stdout: str) -> dict[str, int]:
    """The summary's first number on each `name: N` line."""
    return {name: int(n) for name, n in re.findall(r"^([a-z ]+):\s+(\d+)", stdout, re.M)}


def _digests(paths: list[Path]) -> set[str]:
    return {dataset_digest(p) for p in paths}


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("associations", [1, 3])
def test_mixed_folder_arrives_byte_identical_at_storescp(
    storescp: StoreSCPFactory, tmp_path: Path, associations: int
) -> None:
    sources = generate_mixed_set(tmp_path / "src" / "a", 40)
    sources += generate_mixed_set(tmp_path / "src" / "b" / "c", 10)  # nested folders
    pacs = storescp("PACS")

    result = _send(tmp_path / "src", "--to", f"127.0.0.1:{pacs.port}", "--called-ae", "PACS",
                   "--associations", str(associations))

    assert result.returncode == 0, _output(result)
    assert "\x1b" not in result.stderr + result.stdout  # no terminal codes when not a TTY
    counts = _counts(result.stdout)
    assert counts["sent"] == counts["succeeded"] == len(sources), _output(result)
    assert counts["failed"] == counts["warnings"] == counts["skipped"] == 0
    assert f"over {associations} association" in result.stdout
    assert _digests(pacs.received_files()) == _digests(sources), pacs.log()[-2000:]


def test_more_pairs_than_one_association_holds_are_sent_in_batches(
    storescp: StoreSCPFactory, tmp_path: Path
) -> None:
    sop_classes = [kind.sop_class for kind in MIXED_KINDS] + [
        ComputedRadiographyImageStorage, NuclearMedicineImageStorage,
        PositronEmissionTomographyImageStorage, DigitalMammographyXRayImageStorageForPresentation,
        XRayAngiographicImageStorage, EnhancedMRImageStorage]
    sources = [write_instance(tmp_path / "src", sop_class=sop, transfer_syntax=ts,
                              size_bytes=2000)
               for sop in sop_classes for ts in ALL_SYNTAXES]
    assert len(sources) > send_files.MAX_CONTEXTS
    pacs = storescp("PACS")

    result = _send(tmp_path / "src", "--to", f"127.0.0.1:{pacs.port}", "--called-ae", "PACS")

    assert result.returncode == 0, _output(result)
    assert _counts(result.stdout)["succeeded"] == len(sources)
    assert _digests(pacs.received_files()) == _digests(sources)


def test_send_through_a_router_to_its_folder(start_router: RouterFactory, tmp_path: Path) -> None:
    sources = generate_mixed_set(tmp_path / "src", 20)
    archive = tmp_path / "archive"
    router = start_router({
        "destinations": {"archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    })

    result = _send(tmp_path / "src", "--to", f"127.0.0.1:{router.port}",
                   "--called-ae", "DICOM-ROUTER", "--ae", "MODALITY1", "--associations", "2")

    assert result.returncode == 0, _output(result)
    assert _counts(result.stdout)["succeeded"] == len(sources)
    assert wait_for(lambda: len(_folder_files(archive)) == len(sources)), router.log()[-3000:]
    assert _digests(_folder_files(archive)) == _digests(sources)


def test_non_dicom_files_are_skipped_and_counted(
    storescp: StoreSCPFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 6)
    (tmp_path / "src" / "README.txt").write_text("not an image\n")
    (tmp_path / "src" / "empty.dcm").write_bytes(b"")
    pacs = storescp("PACS")

    result = _send(tmp_path / "src", "--to", f"127.0.0.1:{pacs.port}", "--called-ae", "PACS")

    assert result.returncode == 0, _output(result)
    counts = _counts(result.stdout)
    assert counts["skipped"] == 2 and counts["succeeded"] == len(sources), _output(result)
    assert "skipped 2 files that are not DICOM Part 10" in result.stderr
    assert "README.txt" in result.stderr
    assert _digests(pacs.received_files()) == _digests(sources)


def test_wrong_called_ae_is_rejected_with_the_reason(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    write_instance(tmp_path / "src", sop_class=MIXED_KINDS[0].sop_class,
                   transfer_syntax=EXPLICIT_VR_LE)
    router = start_router({
        "listen": {"require_called_ae": True},
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    })

    result = _send(tmp_path / "src", "--to", f"127.0.0.1:{router.port}", "--called-ae", "NOPE")

    assert result.returncode == 2, _output(result)
    assert (f"association rejected by 127.0.0.1:{router.port}: called AE title not recognised"
            in result.stderr), _output(result)
    assert _counts(result.stdout)["not sent"] == 1


def test_connection_refused_is_a_usage_error(tmp_path: Path) -> None:
    write_instance(tmp_path / "src", sop_class=MIXED_KINDS[0].sop_class,
                   transfer_syntax=EXPLICIT_VR_LE)
    port = free_port()

    result = _send(tmp_path / "src", "--to", f"127.0.0.1:{port}", "--associations", "2")

    assert result.returncode == 2, _output(result)
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in result.stderr
    assert result.stderr.count("cannot connect") == 1  # once, not once per association


def test_refused_instances_fail_with_their_status(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 3)
    router = start_router({
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "only-ct1", "match": {"calling_ae": "CT1"}, "forward": ["archive"]}],
    })

    result = _send(tmp_path / "src", "--to", f"127.0.0.1:{router.port}", "--ae", "STRANGER")

    assert result.returncode == 1, _output(result)
    counts = _counts(result.stdout)
    assert counts["failed"] == counts["sent"] == len(sources) and counts["succeeded"] == 0
    assert re.search(r"^\s+0xC002\s+3\s+\(no routing rule matches", result.stdout, re.M), \
        _output(result)


def test_a_sop_class_the_peer_does_not_accept_fails_only_its_file(
    storescp: StoreSCPFactory, tmp_path: Path
) -> None:
    sources = generate_mixed_set(tmp_path / "src", 5)
    write_instance(tmp_path / "src", sop_class=PRIVATE_SOP_CLASS, transfer_syntax=EXPLICIT_VR_LE)
    pacs = storescp("PACS")

    result = _send(tmp_path / "src", "--to", f"127.0.0.1:{pacs.port}", "--called-ae", "PACS")

    assert result.returncode == 1, _output(result)
    counts = _counts(result.stdout)
    assert counts["succeeded"] == len(sources) and counts["failed"] == 1, _output(result)
    assert re.search(r"^\s+no accepted presentation context\s+1", result.stdout, re.M)
    assert _digests(pacs.received_files()) == _digests(sources)


def test_mutual_tls_to_a_router(start_router: RouterFactory, tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki", "test-ca")
    server = ca.issue("router.example", dns=("localhost",), ip="127.0.0.1", server=True)
    client = ca.issue("modality1")
    sources = generate_mixed_set(tmp_path / "src", 4)
    archive = tmp_path / "archive"
    router = start_router({
        "listen": {"tls": {"mode": "mtls", "cert": str(server.cert), "key": str(server.key),
                           "ca": str(ca.cert_path)}},
        "destinations": {"archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "all", "forward": ["archive"]}],
    })
    to = ("--to", f"127.0.0.1:{router.port}", "--tls-ca", str(ca.cert_path))

    result = _send(tmp_path / "src", *to, "--tls-cert", client.cert, "--tls-key", client.key)
    assert result.returncode == 0, _output(result)
    assert wait_for(lambda: len(_folder_files(archive)) == len(sources)), router.log()[-3000:]
    assert _digests(_folder_files(archive)) == _digests(sources)

    without_cert = _send(tmp_path / "src", *to)
    assert without_cert.returncode == 2, _output(without_cert)
    assert "no_client_certificate" in without_cert.stderr, _output(without_cert)


@pytest.mark.parametrize(("args", "message"), [
    (["--to", "nohost"], "is not HOST:PORT"),
    (["--to", "127.0.0.1:1", "--associations", "0"], "not a number from 1 to 64"),
    (["--to", "127.0.0.1:1", "--max-pdu", "0"], "not a number from 4096"),
    (["--to", "127.0.0.1:1", "--tls-cert", "c.pem"], "need --tls-ca"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    write_instance(tmp_path, sop_class=MIXED_KINDS[0].sop_class, transfer_syntax=EXPLICIT_VR_LE)
    result = _send(tmp_path, *args)
    assert result.returncode == 2, _output(result)
    assert message in result.stderr


def test_no_dicom_files_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = _send(tmp_path, tmp_path / "missing", "--to", "127.0.0.1:1")
    assert result.returncode == 2 and "no such file or folder" in result.stderr
    result = _send(tmp_path, "--to", "127.0.0.1:1")
    assert result.returncode == 2 and "no DICOM files to send" in result.stderr


def _instance(n: int, pair: tuple[str, str]) -> send_files.Instance:
    return send_files.Instance(Path(f"{n}.dcm"), pair[0], f"1.2.{n}", pair[1], 100)


def test_planning_splits_files_and_caps_contexts_per_association() -> None:
    instances = [_instance(n, (f"1.2.3.{n % 200}", EXPLICIT_VR_LE)) for n in range(400)]
    shares = send_files.split(instances, 3)
    assert [len(s) for s in shares] == [134, 133, 133]
    assert send_files.split(instances[:2], 3) == [[instances[0]], [instances[1]]]
    groups = send_files.batches(instances)
    assert [len({i.pair for i in g}) for g in groups] == [128, 72]
    assert sorted(i.path.name for g in groups for i in g) == sorted(i.path.name
                                                                     for i in instances)
    assert parse_address("[::1]:104") == ("::1", 104)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("host:99999")


# --- Ctrl-C tells the truth (issue 15) -------------------------------------------------------

def _interrupted_send(start_router: RouterFactory, tmp_path: Path, interrupts: int
                      ) -> tuple[subprocess.CompletedProcess[str], set[str], list[Path]]:
    """Send 3 instances of 200 MB to a router, Ctrl-C once the first is on its way; the
    result, the file names that arrived at the folder destination, and the sources."""
    sources = [write_instance(tmp_path / "src", sop_class=MIXED_KINDS[0].sop_class,
                              transfer_syntax=EXPLICIT_VR_LE, size_bytes=200_000_000)
               for _ in range(3)]
    archive = tmp_path / "archive"
    router = start_router({
        "destinations": {"archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "all", "forward": ["archive"]}]})
    incoming = router.spool / "incoming"
    process = subprocess.Popen(
        [*ROUTER, "send", str(tmp_path / "src"), "--to", f"127.0.0.1:{router.port}",
         "--called-ae", "DICOM-ROUTER", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: _receiving(incoming) > 20_000_000, timeout=60, interval=0.005)
        for _ in range(interrupts):
            process.send_signal(signal.SIGINT)
            time.sleep(0.05)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    # Settled: every acknowledged job delivered and gone from the spool.
    assert wait_for(lambda: not list((router.spool / "jobs").glob("*.dcm")), timeout=60)
    return result, {p.name for p in _folder_files(archive)}, sources


def _receiving(incoming: Path) -> int:
    total = 0
    for path in incoming.glob("*"):
        with contextlib.suppress(OSError):  # renamed into the spool meanwhile
            total += path.stat().st_size
    return total


def _check_the_truth(result: subprocess.CompletedProcess[str], arrived: set[str],
                     sources: list[Path]) -> dict[str, int]:
    counts = _counts(result.stdout)
    assert "Traceback" not in result.stderr, _output(result)
    assert result.returncode == 1, _output(result)
    assert "interrupted: the files not yet tried were not sent" in result.stderr
    unknown = {Path(line.strip()).name for line in result.stdout.splitlines()
               if line.strip().endswith(".dcm")}
    assert counts["succeeded"] + counts.get("unknown", 0) + counts.get("not sent", 0) \
        == len(sources), _output(result)
    # What was acknowledged arrived; whatever else arrived was reported as unknown.
    assert len(arrived - unknown) == counts["succeeded"], (_output(result), arrived)
    assert arrived <= {s.name for s in sources}
    return counts


def test_ctrl_c_waits_for_the_file_in_progress_and_says_so(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    result, arrived, sources = _interrupted_send(start_router, tmp_path, interrupts=1)
    counts = _check_the_truth(result, arrived, sources)
    assert "waiting for the answers to the files in progress" in result.stderr
    assert counts["succeeded"] >= 1 and counts.get("unknown", 0) == 0, _output(result)


def test_second_ctrl_c_aborts_and_reports_the_file_as_unknown(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    result, arrived, sources = _interrupted_send(start_router, tmp_path, interrupts=2)
    counts = _check_the_truth(result, arrived, sources)
    assert "aborting the associations in progress" in result.stderr, _output(result)
    assert counts.get("unknown", 0) >= 1, _output(result)
    assert "aborted by Ctrl-C while in progress" in result.stdout


def _peak_rss_kb(*args: str | Path) -> int:
    """The largest resident set `dicom-router send` reached (its own rusage), after it
    stored every file."""
    process = subprocess.Popen([*ROUTER, "send", *map(str, args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, f"send exited {process.returncode}"
    return int(usage.ru_maxrss)


def test_a_slow_link_does_not_fill_the_senders_memory(tmp_path: Path) -> None:
    """pynetdicom queued every PDU of a file for its socket with no bound: over a link
    slower than the disk, `send` held what the peer had not taken yet (a 500 MB instance
    over 50 MB/s: 470-570 MB of RSS). It waits for the socket now: its memory does not grow
    with the file (router/dicom/bounded_pdu_queue.py)."""
    small = write_instance(tmp_path / "small", sop_class=MRImageStorage,
                           transfer_syntax=EXPLICIT_VR_LE, size_bytes=100_000)
    large = write_instance(tmp_path / "large", sop_class=MRImageStorage,
                           transfer_syntax=EXPLICIT_VR_LE, size_bytes=48_000_000, frames=4)
    # PDUs of 128 KiB (storescp's largest), as a PACS would take: pynetdicom cuts them
    # faster than the link carries them.
    with StoreSCP(tmp_path / "pacs", "SLOWPACS", extra_args=["--max-pdu", "131072"]) as scp, \
            SlowLink(scp.port, rate=50e6) as link:
        to = ("--to", f"127.0.0.1:{link.port}", "--called-ae", "SLOWPACS")
        baseline = _peak_rss_kb(small, *to)
        peak = _peak_rss_kb(large, *to)
        assert peak - baseline < 12 * 1024, (baseline, peak)
        assert _digests(scp.received_files()) == _digests([small, large])
