"""Interop matrix, query/retrieve over TLS: DCMTK's echoscu, findscu, getscu and movescu talk
to the router's mutual-TLS listener; the router relays to a real archive (DCMTK dcmqrscp).

echoscu and findscu use DCMTK's own +tls. DCMTK 3.6.7's getscu and movescu have no TLS
options, so they reach the router through tests/tls_tunnel.py (plain to the tunnel, TLS with
a client certificate from there): the DICOM peer is still DCMTK, the router sees a TLS client.
One pki, archive, viewer and router serve the module.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.archive_servers import Dcmqrscp
from tests.dcmtk import LOCALHOST, StoreSCP, dcmtk_env
from tests.dicom_samples import EXPLICIT_VR_LE, dataset_digest
from tests.integration.router_process import RouterProcess, wait_for
from tests.pki import CertificateAuthority, Issued
from tests.qr_tools import run_findscu, run_getscu, run_movescu
from tests.study_set import Study, StudySet, instance_mismatches
from tests.tls_tunnel import TlsTunnel

pytestmark = pytest.mark.integration

ROUTER_AE = "DICOM-ROUTER"
STUDY_KEYS = {"StudyInstanceUID": "", "PatientID": "", "AccessionNumber": "", "StudyDate": ""}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder / "ca", "hospital-ca")
    rogue = CertificateAuthority(folder / "rogue", "rogue-ca")
    return {
        "ca": ca,
        "server": ca.issue("router.example", dns=("localhost",), ip="127.0.0.1", server=True),
        "modality": ca.issue("modality1"),
        "rogue": rogue.issue("modality1", file_stem="rogue-modality"),
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, study_set: StudySet,
            viewer: StoreSCP) -> Iterator[Dcmqrscp]:
    # Pass-through moves: the archive delivers to the viewer itself, in plain TCP.
    with Dcmqrscp(tmp_path_factory.mktemp("archive"), study_set, "ARCHIVE",
                  move_destinations=[("VIEWER", LOCALHOST, viewer.port)]) as qr:
        yield qr


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Any], archive: Dcmqrscp,
           viewer: StoreSCP) -> Iterator[RouterProcess]:
    server: Issued = pki["server"]
    config = {
        "listen": {"tls": {"mode": "mtls", "cert": str(server.cert), "key": str(server.key),
                           "ca": str(pki["ca"].cert_path), "handshake_timeout": 5}},
        "destinations": {"archive": {"type": "dicom", "ae_title": "ARCHIVE", "host": LOCALHOST,
                                     "port": archive.port, "move_mode": "pass_through",
                                     "dimse_timeout": 15}},
        "known_aes": {"VIEWER": {"host": LOCALHOST, "port": viewer.port}},
        "rules": [{"name": "qr", "query": ["archive"]}],
        "request_timeout": 30,
    }
    with RouterProcess(tmp_path_factory.mktemp("router"), config) as process:
        yield process


def tls_args(pki: dict[str, Any], client: Issued) -> list[str]:
    """DCMTK's options for TLS with a client certificate (unencrypted key), trusting our CA."""
    return ["+tls", str(client.key), str(client.cert), "-pw", "+cf", str(pki["ca"].cert_path)]


@pytest.fixture
def tunnel(router: RouterProcess, pki: dict[str, Any]) -> Iterator[TlsTunnel]:
    modality: Issued = pki["modality"]
    with TlsTunnel(router.port, pki["ca"].cert_path, modality.cert, modality.key) as tunnel:
        yield tunnel


def explicit_study(study_set: StudySet) -> Study:
    return next(s for s in study_set.studies if s.transfer_syntaxes == {EXPLICIT_VR_LE})


def requests(router: RouterProcess, command: str) -> float:
    return router.metric("dicom_router_dimse_requests_total", command=command, status="0x0000")


def test_echoscu_over_tls_is_answered(router: RouterProcess, pki: dict[str, Any]) -> None:
    before = requests(router, "C-ECHO")
    done = subprocess.run(["echoscu", "-v", "-to", "10", "-ta", "10", "-aet", "ECHOSCU",
                           "-aec", ROUTER_AE, *tls_args(pki, pki["modality"]),
                           LOCALHOST, str(router.port)],
                          capture_output=True, text=True, timeout=60, env=dcmtk_env(),
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Received Echo Response (Success)" in done.stdout + done.stderr
    assert requests(router, "C-ECHO") == before + 1


def test_findscu_over_tls_returns_the_archive_studies(
        router: RouterProcess, archive: Dcmqrscp, study_set: StudySet,
        pki: dict[str, Any]) -> None:
    direct = run_findscu(LOCALHOST, archive.port, "ARCHIVE", "STUDY", STUDY_KEYS)
    via = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", STUDY_KEYS,
                      extra_args=tls_args(pki, pki["modality"]))
    assert len(direct) == len(study_set.studies)
    assert sorted(str(r.StudyInstanceUID) for r in via) == sorted(
        s.study_instance_uid for s in study_set.studies)
    by_uid = {str(d.StudyInstanceUID): d for d in direct}
    for result in via:
        assert result == by_uid[str(result.StudyInstanceUID)]  # every key, every value


def test_getscu_over_tls_retrieves_a_series_byte_identical(
        router: RouterProcess, archive: Dcmqrscp, study_set: StudySet, tunnel: TlsTunnel,
        tmp_path: Path) -> None:
    study = explicit_study(study_set)
    series = study.series[0]
    keys = {"StudyInstanceUID": study.study_instance_uid,
            "SeriesInstanceUID": series.series_instance_uid}
    direct = run_getscu(LOCALHOST, archive.port, "ARCHIVE", "SERIES", keys, tmp_path / "direct")
    before = requests(router, "C-GET")
    via = run_getscu(LOCALHOST, tunnel.port, ROUTER_AE, "SERIES", keys, tmp_path / "via")
    assert tunnel.errors == []
    assert len(via) == len(series.instances) == len(direct)
    assert instance_mismatches(series.instances, via) == []
    assert sorted(dataset_digest(p) for p in via) == sorted(dataset_digest(p) for p in direct)
    assert not list((router.spool / "relay").iterdir()), "relay files left behind"
    assert requests(router, "C-GET") == before + 1


def test_movescu_over_tls_moves_a_study_to_the_viewer(
        router: RouterProcess, viewer: StoreSCP, study_set: StudySet,
        tunnel: TlsTunnel) -> None:
    study = explicit_study(study_set)
    before = requests(router, "C-MOVE")
    for path in viewer.received_files():
        path.unlink()
    result = run_movescu(LOCALHOST, tunnel.port, ROUTER_AE, "STUDY",
                         {"StudyInstanceUID": study.study_instance_uid}, "VIEWER")
    assert result.ok, result.output
    assert tunnel.errors == []
    assert instance_mismatches(study.instances, viewer.received_files()) == []
    assert requests(router, "C-MOVE") == before + 1


def test_an_untrusted_client_certificate_is_refused_and_the_router_carries_on(
        router: RouterProcess, study_set: StudySet, pki: dict[str, Any]) -> None:
    failures = "dicom_router_tls_handshake_failures_total"
    rogue = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", STUDY_KEYS,
                        extra_args=tls_args(pki, pki["rogue"]), check=False, timeout=30)
    assert rogue == []
    assert wait_for(lambda: router.metric(failures, reason="unknown_ca") == 1), router.metrics()
    plain = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", STUDY_KEYS, check=False,
                        timeout=30)
    assert plain == []
    assert wait_for(lambda: router.metric(failures, reason="not_tls") == 1), router.metrics()
    assert "TLS handshake from 127.0.0.1 failed: unknown_ca" in router.log()
    # The same router answers the next trusted client.
    assert router.process is not None and router.process.poll() is None
    good = run_findscu(LOCALHOST, router.port, ROUTER_AE, "STUDY", STUDY_KEYS,
                       extra_args=tls_args(pki, pki["modality"]))
    assert len(good) == len(study_set.studies)
