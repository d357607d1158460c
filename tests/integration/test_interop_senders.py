"""Interop matrix, senders: independent DICOM stacks send into the router's acceptor, which
delivers to a DCMTK storescp without --fork (one association at a time, as many PACS).

Senders: GDCM's gdcmscu, Orthanc (REST /modalities/{id}/store and /echo), pynetdicom's own
storescu/echoscu apps, and DCMTK storescu proposing several transfer syntaxes per context.
For each: the router answers the peer's C-ECHO, and every instance arrives with its dataset
byte-identical to what the sender sent, in the syntax it was sent in (file meta is the
destination's own and is not compared).

One router and one storescp serve the whole module; each test sends fresh UIDs and waits for
its own instances, so the tests stay independent of their order.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, CTImageStorage, JPEGLosslessSV1, MRImageStorage

from tests.archive_servers import Orthanc
from tests.compressed_samples import write_compressed
from tests.dcmtk import LOCALHOST, StoreSCP, dcmtk_env
from tests.dicom_samples import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000_LOSSLESS,
    RLE_LOSSLESS,
    dataset_digest,
    write_instance,
)
from tests.integration.conftest import dicom_destination
from tests.integration.router_process import RouterProcess, wait_for

pytestmark = pytest.mark.integration

ROUTER_AE = "DICOM-ROUTER"
# Debian's libgdcm-tools; the venv's python-gdcm wheel also installs a `gdcmscu` script.
GDCMSCU = "/usr/bin/gdcmscu" if Path("/usr/bin/gdcmscu").exists() else "gdcmscu"


@dataclass(frozen=True)
class Chain:
    """The router under test and its one destination."""

    router: RouterProcess
    pacs: StoreSCP

    def echoes_answered(self) -> float:
        return self.router.metric("dicom_router_dimse_requests_total", command="C-ECHO",
                                  status="0x0000")

    def assert_arrived(self, sources: Sequence[Path], sender_output: str = "") -> None:
        """Every source's dataset is stored by the destination, byte for byte, under the
        source's transfer syntax."""
        want = {dataset_digest(p): p for p in sources}

        def stored() -> dict[str, Path]:
            return {digest: p for p in self.pacs.received_files() if (digest := _digest(p))}

        def missing() -> list[str]:
            return [path.name for digest, path in want.items() if digest not in stored()]

        assert wait_for(lambda: not missing(), timeout=60), (
            f"not arrived or changed in transit: {missing()}\n--- sender\n{sender_output}\n"
            f"--- storescp\n{self.pacs.log()[-2000:]}\n--- router\n{self.router.log()[-4000:]}")
        arrived = stored()
        for digest, source in want.items():
            assert _syntax(arrived[digest]) == _syntax(source), (source.name, arrived[digest])


def _digest(path: Path) -> str:
    """dataset_digest, or "" while storescp is still writing the file."""
    try:
        return dataset_digest(path)
    except (ValueError, struct.error):
        return ""


def _syntax(path: Path) -> str:
    return str(read_file_meta_info(path).TransferSyntaxUID)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with StoreSCP(tmp_path_factory.mktemp("pacs"), "PACS") as pacs:
        router = RouterProcess(tmp_path_factory.mktemp("router"), {
            "destinations": {"pacs": dicom_destination(pacs)},
            "rules": [{"name": "all", "forward": ["pacs"]}],
        })
        with router:
            yield Chain(router, pacs)
            log = router.log()
    # No peer's way of talking may cost the router a traceback or an error.
    problems = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    assert problems == [], "\n".join(problems)


def _run(command: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=dcmtk_env(), timeout=timeout, check=False)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\n{result.stdout}{result.stderr}"


def _uncompressed_set(folder: Path) -> list[Path]:
    """A few instances: two SOP classes, implicit and explicit VR, one spanning PDUs."""
    return [
        write_instance(folder, sop_class=CTImageStorage, transfer_syntax=EXPLICIT_VR_LE),
        write_instance(folder, sop_class=CTImageStorage, transfer_syntax=IMPLICIT_VR_LE),
        write_instance(folder, sop_class=MRImageStorage, transfer_syntax=EXPLICIT_VR_LE,
                       size_bytes=300_000, modality="MR"),
        write_instance(folder, sop_class=MRImageStorage, transfer_syntax=IMPLICIT_VR_LE,
                       modality="MR"),
    ]


# --- GDCM ----------------------------------------------------------------------------------

# gdcmscu 3.0.21 (Debian bookworm) aborts with this after the A-RELEASE-RP has arrived, against
# DCMTK's storescp as much as against the router: its exit status says nothing, so the test
# reads its debug log (-D) for the statuses and the orderly release instead.
GDCM_TEARDOWN_DEFECT = "ProtocolStream as nullptr is invalid"


def _gdcmscu(chain: Chain, *args: str) -> str:
    """Run gdcmscu against the router; return its log once it has ended the association
    orderly (A-RELEASE-RP, PDU type 6) after nothing but Success statuses."""
    if shutil.which(GDCMSCU) is None:
        pytest.fail("gdcmscu not installed: run scripts/install-test-deps.sh (libgdcm-tools)")
    result = _run([GDCMSCU, "-D", "--aetitle", "GDCMSCU", "--call", ROUTER_AE, *args,
                   LOCALHOST, str(chain.router.port)])
    log = _output(result)
    assert result.returncode == 0 or GDCM_TEARDOWN_DEFECT in log, log[-4000:]
    assert "PDU code: 6" in log, f"no A-RELEASE-RP:\n{log[-4000:]}"
    statuses = [line.split()[3] for line in log.splitlines() if line.startswith("(0000,0900)")]
    assert statuses and set(statuses) == {"0"}, f"statuses {statuses}\n{log[-4000:]}"
    return log


def test_gdcmscu_echo(chain: Chain) -> None:
    echoes = chain.echoes_answered()
    _gdcmscu(chain, "--echo")
    assert chain.echoes_answered() == echoes + 1


def test_gdcmscu_store(chain: Chain, tmp_path: Path) -> None:
    sources = [*_uncompressed_set(tmp_path / "src"),
               write_compressed(tmp_path / "src", JPEGLosslessSV1)]
    log = _gdcmscu(chain, "--store", "--recursive", "-i", str(tmp_path / "src"))
    chain.assert_arrived(sources, log[-4000:])


# --- Orthanc -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    modalities = {"router": (ROUTER_AE, LOCALHOST, chain.router.port)}
    with Orthanc(tmp_path_factory.mktemp("orthanc"), modalities=modalities) as server:
        yield server


def test_orthanc_echo(chain: Chain, orthanc: Orthanc) -> None:
    echoes = chain.echoes_answered()
    # Orthanc answers 200 with an empty object when the C-ECHO succeeded, 500 otherwise.
    assert orthanc.rest("/modalities/router/echo", "POST", {}) == {}
    assert chain.echoes_answered() == echoes + 1


def test_orthanc_store(chain: Chain, orthanc: Orthanc, tmp_path: Path) -> None:
    sources = [*_uncompressed_set(tmp_path / "src"),
               write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=JPEG_2000_LOSSLESS),
               write_compressed(tmp_path / "src", JPEGLosslessSV1)]
    ids = orthanc.upload(sources)
    answer = orthanc.rest("/modalities/router/store", "POST",
                          {"Resources": ids, "Synchronous": True}, timeout=120)
    assert answer.get("InstancesCount") == len(sources), answer
    assert answer.get("FailedInstancesCount") == 0, answer
    chain.assert_arrived(sources, str(answer) + "\n" + orthanc.log()[-2000:])


# --- pynetdicom's apps ---------------------------------------------------------------------


def _pynetdicom_app(chain: Chain, app: str, *args: str) -> str:
    result = _run([sys.executable, "-m", "pynetdicom", app, "-v", "-aet", "PYNETDICOM",
                   "-aec", ROUTER_AE, LOCALHOST, str(chain.router.port), *args])
    log = _output(result)
    assert result.returncode == 0, log
    return log


def test_pynetdicom_echoscu(chain: Chain) -> None:
    echoes = chain.echoes_answered()
    log = _pynetdicom_app(chain, "echoscu")
    assert "Received Echo Response (Status: 0x0000 - Success)" in log, log
    assert chain.echoes_answered() == echoes + 1


def _as_explicit_le(path: Path, folder: Path) -> Path:
    """The instance as pydicom re-encodes it in Explicit VR Little Endian: what pynetdicom
    sends when the context it proposed accepted that syntax and not the file's own."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE:
        return path
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / path.name, implicit_vr=False, little_endian=True,
               enforce_file_format=True)
    return folder / path.name


def test_pynetdicom_storescu_required_contexts(chain: Chain, tmp_path: Path) -> None:
    """-cx: one context per SOP class and syntax of the files; sent as they are."""
    sources = [*_uncompressed_set(tmp_path / "src"),
               write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=DEFLATED_EXPLICIT_VR_LE),
               write_compressed(tmp_path / "src", JPEGLosslessSV1)]
    log = _pynetdicom_app(chain, "storescu", str(tmp_path / "src"), "-r", "-cx")
    assert log.count("Received Store Response (Status: 0x0000 - Success)") == len(sources), log
    chain.assert_arrived(sources, log)


def test_pynetdicom_storescu_default_contexts(chain: Chain, tmp_path: Path) -> None:
    """By default pynetdicom proposes its whole storage list, Explicit VR LE first; the router
    accepts the first syntax proposed, so pynetdicom re-encodes the Implicit VR files, and
    they must arrive exactly as it sent them, in Explicit VR LE."""
    sources = _uncompressed_set(tmp_path / "src")
    log = _pynetdicom_app(chain, "storescu", str(tmp_path / "src"), "-r")
    assert log.count("Received Store Response (Status: 0x0000 - Success)") == len(sources), log
    as_sent = [_as_explicit_le(p, tmp_path / "as-sent") for p in sources]
    chain.assert_arrived(as_sent, log)  # in Explicit VR LE, the syntax of every `as_sent`


# --- DCMTK storescu proposing several transfer syntaxes per context -----------------------

# The other tests send with tests/dcmtk.run_storescu, which proposes exactly one syntax per
# context. Here storescu proposes a list per context (+C), with the file's own syntax first,
# as real modalities do: the router must accept it, store the bytes as they came and deliver
# them in that syntax.
PROPOSALS = [
    pytest.param("-xb", EXPLICIT_VR_BE, id="big-endian-first"),
    pytest.param("-xd", DEFLATED_EXPLICIT_VR_LE, id="deflated"),
    pytest.param("-xr", RLE_LOSSLESS, id="rle"),
    pytest.param("-xv", JPEG_2000_LOSSLESS, id="j2k-lossless"),
    pytest.param("-xs", JPEGLosslessSV1, id="jpeg-lossless"),
]


@pytest.mark.parametrize("combine", [["+C"], []], ids=["one-context", "context-per-syntax"])
@pytest.mark.parametrize(("proposal", "syntax"), PROPOSALS)
def test_storescu_proposing_several_syntaxes(chain: Chain, tmp_path: Path, proposal: str,
                                             syntax: str, combine: list[str]) -> None:
    folder = tmp_path / "src"
    if syntax == JPEGLosslessSV1:  # really compressed (dcmcjpeg), not random fragments
        sources = [write_compressed(folder, syntax), write_compressed(folder, syntax)]
    else:
        sources = [write_instance(folder, sop_class=CTImageStorage, transfer_syntax=syntax),
                   write_instance(folder, sop_class=MRImageStorage, transfer_syntax=syntax,
                                  modality="MR", size_bytes=200_000)]
    result = _run(["storescu", proposal, *combine, "-aet", "STORESCU", "-aec", ROUTER_AE, "-v",
                   LOCALHOST, str(chain.router.port), *map(str, sources)])
    log = _output(result)
    assert result.returncode == 0, log
    chain.assert_arrived(sources, log)  # in `syntax`: the one storescu proposed first
