"""TLS on the listener and towards destinations, against DCMTK's +tls tools and a throwaway PKI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt

from tests.dcmtk import LOCALHOST, StoreSCP, dcmtk_env, free_port, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, dataset_digest, generate_mixed_set, write_instance
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.router_process import ROUTER, RouterProcess, wait_for
from tests.pki import CertificateAuthority, Issued

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder / "ca", "hospital-ca")
    rogue = CertificateAuthority(folder / "rogue", "rogue-ca")
    return {
        "ca": ca,
        "server": ca.issue("router.example", dns=("localhost",), ip="127.0.0.1", server=True),
        "pacs": ca.issue("pacs.example", dns=("localhost",), ip="127.0.0.1", server=True),
        "modality": ca.issue("modality1"),
        "router_client": ca.issue("router-client"),
        "expired": ca.issue("modality-old", expired=True),
        "rogue": rogue.issue("modality1", file_stem="rogue-modality"),
        "encrypted": ca.issue("router-enc", dns=("localhost",), ip="127.0.0.1", server=True,
                              password=b"s3cret-pass"),
    }


def _listener(pki: dict[str, Any], mode: str, tmp_path: Path, **tls: Any) -> dict[str, Any]:
    server: Issued = pki["server"]
    return {
        "listen": {"tls": {"mode": mode, "cert": str(server.cert), "key": str(server.key),
                           "ca": str(pki["ca"].cert_path), "handshake_timeout": 2, **tls}},
        "destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
        "rules": [{"name": "all", "forward": ["keep"]}],
    }


def _echo(port: int, pki: dict[str, Any], client: Issued | None, *, tls: bool = True,
          calling_ae: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    args = ["echoscu", "-to", "10", "-ta", "10", "-aet", calling_ae, "-aec", "DICOM-ROUTER"]
    if tls:
        args += (["+tls", str(client.key), str(client.cert), "-pw"] if client else ["+tla"])
        args += ["+cf", str(pki["ca"].cert_path)]
    args += [LOCALHOST, str(port)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=dcmtk_env(),
                          check=False)


def _failures(router: RouterProcess, reason: str) -> float:
    return router.metric("dicom_router_tls_handshake_failures_total", reason=reason)


def test_tls_mode_serves_a_verified_server_certificate(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    router = start_router(_listener(pki, "tls", tmp_path))
    result = _echo(router.port, pki, None)
    assert result.returncode == 0, result.stderr
    sources = generate_mixed_set(tmp_path / "src", 5)
    sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                        extra_args=["+tla", "+cf", str(pki["ca"].cert_path)])
    assert sent.returncode == 0, sent.stderr
    keep = tmp_path / "keep"
    assert wait_for(lambda: len(list(keep.rglob("*.dcm"))) == 5)
    assert {dataset_digest(p) for p in keep.rglob("*.dcm")} == {dataset_digest(p)
                                                                for p in sources}


def test_plaintext_client_is_refused_by_a_tls_listener(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    router = start_router(_listener(pki, "tls", tmp_path))
    assert _echo(router.port, pki, None, tls=False).returncode != 0
    assert wait_for(lambda: _failures(router, "not_tls") == 1)


def test_mtls_accepts_a_good_certificate_and_refuses_bad_ones(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    router = start_router(_listener(pki, "mtls", tmp_path))
    good = _echo(router.port, pki, pki["modality"])
    assert good.returncode == 0, good.stderr

    assert _echo(router.port, pki, pki["rogue"]).returncode != 0
    assert _echo(router.port, pki, pki["expired"]).returncode != 0
    assert _echo(router.port, pki, None).returncode != 0  # anonymous: no client certificate
    assert wait_for(lambda: _failures(router, "unknown_ca") == 1), router.metrics()
    assert _failures(router, "certificate_expired") == 1
    assert _failures(router, "no_client_certificate") == 1
    assert "TLS handshake from 127.0.0.1 failed: unknown_ca" in router.log()
    # A modality that does not trust the router's CA refuses the router's certificate: its
    # alert is not counted as the modality's own unknown_ca (regression).
    client: Issued = pki["modality"]
    distrust = subprocess.run(
        ["echoscu", "-to", "10", "-ta", "10", "-aec", "DICOM-ROUTER", "+tls", str(client.key),
         str(client.cert), "-pw", "+cf", str(pki["rogue"].cert.parent / "rogue-ca.pem"),
         LOCALHOST, str(router.port)],
        capture_output=True, text=True, timeout=60, env=dcmtk_env(), check=False)
    assert distrust.returncode != 0
    assert wait_for(lambda: _failures(router, "peer_refused_our_certificate") == 1)
    assert _failures(router, "unknown_ca") == 1
    assert "failed: the peer refused the router's certificate (unknown_ca)" in router.log()


def test_certificate_bound_to_its_ae_titles(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    router = start_router(_listener(pki, "mtls", tmp_path, ae_titles={"modality1": ["CT1"]}))
    assert _echo(router.port, pki, pki["modality"], calling_ae="CT1").returncode == 0
    wrong = _echo(router.port, pki, pki["modality"], calling_ae="CT2")
    assert wrong.returncode != 0
    assert "Calling AE Title Not Recognized" in wrong.stderr + wrong.stdout
    assert router.metric("dicom_router_association_rejections_total",
                         reason="tls_identity") == 1


def _encrypted_listener(pki: dict[str, Any], tmp_path: Path, **source: Any) -> dict[str, Any]:
    enc: Issued = pki["encrypted"]
    config = _listener(pki, "tls", tmp_path)
    config["listen"]["tls"].update({"cert": str(enc.cert), "key": str(enc.key), **source})
    return config


# Issue 16: client certificates could not be revoked.
def test_a_revoked_client_certificate_is_refused(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    ca: CertificateAuthority = pki["ca"]
    revoked = ca.issue("modality-stolen")
    crl = ca.revocation_list(tmp_path / "hospital.crl", (revoked,))
    router = start_router(_listener(pki, "mtls", tmp_path, crl=str(crl)))
    good = _echo(router.port, pki, pki["modality"])
    assert good.returncode == 0, good.stderr
    assert _echo(router.port, pki, revoked).returncode != 0
    assert wait_for(lambda: _failures(router, "certificate_revoked") == 1), router.metrics()


# Issue 16: every failed handshake wrote ~1.2 KB of audit, without a limit.
def test_failed_handshakes_are_audited_a_few_times_a_minute(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    trail = tmp_path / "audit.jsonl"
    config = {**_listener(pki, "tls", tmp_path), "audit": {"enabled": True, "path": str(trail)}}
    router = start_router(config)
    for _ in range(20):
        with socket.create_connection((LOCALHOST, router.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(OSError):
                sock.recv(100)
    assert wait_for(lambda: _failures(router, "not_tls") == 20), router.metrics()
    audited = wait_for(lambda: trail.exists() and trail.read_text().count("TLS handshake") == 5)
    assert audited, trail.read_text() if trail.exists() else "no audit file"
    assert router.metric("dicom_router_log_suppressed_total", what="audit_tls_failure") == 15


@pytest.mark.parametrize("source", ["file", "env", "command"])
def test_encrypted_key_with_each_password_source(
    source: str, pki: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "key.pass"
    secret.write_text("s3cret-pass\n")
    options = {"file": {"key_password_file": str(secret)},
               "env": {"key_password_env": "ROUTER_KEY_PASSWORD"},
               "command": {"key_password_command": ["cat", str(secret)]}}[source]
    monkeypatch.setenv("ROUTER_KEY_PASSWORD", "s3cret-pass")
    with RouterProcess(tmp_path / "r", _encrypted_listener(pki, tmp_path, **options)) as router:
        assert _echo(router.port, pki, None).returncode == 0


def test_wrong_key_password_is_a_clear_startup_error(pki: dict[str, Any], tmp_path: Path) -> None:
    secret = tmp_path / "key.pass"
    secret.write_text("wrong\n")
    router = RouterProcess(tmp_path / "r", _encrypted_listener(
        pki, tmp_path, key_password_file=str(secret)))
    done = subprocess.run([*ROUTER, "run", "--config", str(router.config_path)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)
    assert done.returncode == 1
    assert f"listen.tls.key_password_file: wrong password for the encrypted key " \
        f"{pki['encrypted'].key}" in done.stderr


@pytest.mark.parametrize("what", ["cert", "key"])
def test_a_missing_certificate_or_key_file_is_named_at_start(
    what: str, pki: dict[str, Any], tmp_path: Path
) -> None:
    # Regression: `run` said "listen.tls: cannot read None" (OpenSSL names no file).
    missing = tmp_path / f"missing.{what}"
    router = RouterProcess(tmp_path / "r", _listener(pki, "tls", tmp_path, **{what: str(missing)}))
    done = subprocess.run([*ROUTER, "run", "--config", str(router.config_path)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)
    assert done.returncode == 1
    assert f"listen.tls.{what}: cannot read {missing}: No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stalled_handshake_does_not_delay_anyone_else(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Regression: pynetdicom's own server handshakes in its accept loop, without a deadline."""
    router = start_router(_listener(pki, "tls", tmp_path))
    staller = socket.create_connection((LOCALHOST, router.port))
    try:
        result = _echo(router.port, pki, None)  # while the staller holds its connection
        assert result.returncode == 0, result.stderr
        staller.settimeout(10)
        assert staller.recv(1) == b""  # closed by the router after handshake_timeout (2 s)
        assert wait_for(lambda: _failures(router, "handshake_timeout") == 1)
    finally:
        staller.close()


def test_sighup_reloads_the_certificate_for_new_connections(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    cert = tmp_path / "live.crt"
    key = tmp_path / "live.key"
    first: Issued = pki["server"]
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    config = _listener(pki, "tls", tmp_path)
    config["listen"]["tls"].update({"cert": str(cert), "key": str(key)})
    router = start_router(config)
    assert _served_common_name(router.port, pki) == "router.example"
    ae = AE(ae_title="LIVE")
    ae.add_requested_context("1.2.840.10008.1.1")
    client = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
    live = ae.associate(LOCALHOST, router.port, ae_title="DICOM-ROUTER",
                        tls_args=(client, "localhost"))
    assert live.is_established

    renewed = pki["ca"].issue("router-renewed.example", dns=("localhost",), ip="127.0.0.1",
                              server=True)
    cert.write_bytes(renewed.cert.read_bytes())
    key.write_bytes(renewed.key.read_bytes())
    assert router.process is not None
    os.kill(router.process.pid, signal.SIGHUP)
    assert wait_for(lambda: _served_common_name(router.port, pki) == "router-renewed.example")
    assert _echo(router.port, pki, None).returncode == 0
    # The workers heard it too (their outbound TLS reconnects): logged outside the handler.
    assert wait_for(lambda: router.log().count("destinations reconnect with reloaded TLS") == 2)
    # The association opened before the reload carries on with its session.
    assert live.is_established and live.send_c_echo().Status == 0x0000
    live.release()


def test_a_reload_that_adds_a_crl_refuses_the_revoked_certificate(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Regression: a reload logged listen.tls.crl and min_version as changed, but the
    listener kept the TLS settings it started with until a restart."""
    ca: CertificateAuthority = pki["ca"]
    lost = ca.issue("modality-lost")
    router = start_router(_listener(pki, "mtls", tmp_path))
    assert _echo(router.port, pki, lost).returncode == 0
    config = yaml.safe_load(router.config_path.read_text())
    config["listen"]["tls"].update(
        crl=str(ca.revocation_list(tmp_path / "hospital.crl", (lost,))), min_version="1.3")
    router.config_path.write_text(yaml.safe_dump(config))
    assert router.process is not None
    os.kill(router.process.pid, signal.SIGHUP)
    acceptors = set(re.findall(r"(acceptor-\d+) accepting DICOM", router.log()))
    applied = re.compile(r"(acceptor-\d+) router\.acceptor\.main: applied the reloaded")
    assert acceptors and wait_for(lambda: set(applied.findall(router.log())) == acceptors), \
        router.log()
    assert _echo(router.port, pki, lost).returncode != 0
    assert wait_for(lambda: _failures(router, "certificate_revoked") == 1), router.metrics()
    good = _echo(router.port, pki, pki["modality"])
    assert good.returncode == 0, good.stderr
    tls12 = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    tls12.load_cert_chain(pki["modality"].cert, pki["modality"].key)
    with socket.create_connection((LOCALHOST, router.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLError):
        tls12.wrap_socket(raw, server_hostname="localhost")


def _served_common_name(port: int, pki: dict[str, Any]) -> str:
    context = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
    with socket.create_connection((LOCALHOST, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        cert = tls.getpeercert()
    return str(dict(rdn[0] for rdn in cert["subject"])["commonName"])


def test_outbound_mtls_to_a_dcmtk_peer(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    pacs_cert: Issued = pki["pacs"]
    client: Issued = pki["router_client"]
    tls_args = ["+tls", str(pacs_cert.key), str(pacs_cert.cert), "+cf", str(pki["ca"].cert_path),
                "-pw", "-rc"]
    # A small instance, and one large enough that over plain TCP it would go by sendfile
    # (router/dicom/pdata_stream.py): over TLS it must pass through the SSL object.
    sources = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE, size_bytes=size)
               for size in (10_000, 3_000_001)]
    with StoreSCP(tmp_path / "PACS", "PACS", extra_args=[*tls_args]) as pacs:
        destination = {**dicom_destination(pacs), "tls": {
            "mode": "mtls", "ca": str(pki["ca"].cert_path), "cert": str(client.cert),
            "key": str(client.key), "server_name": "localhost"}}
        router = start_router({"destinations": {"pacs": destination},
                               "rules": [{"name": "all", "forward": ["pacs"]}]})
        assert run_storescu(sources, LOCALHOST, router.port,
                            called_ae="DICOM-ROUTER").returncode == 0
        assert wait_for(lambda: router.metric("dicom_router_instances_forwarded_total",
                                              destination="pacs", result="delivered") == 2)
        assert ({dataset_digest(p) for p in pacs.received_files()}
                == {dataset_digest(p) for p in sources})


def test_certificates_issued_by_an_intermediate_ca_are_served_with_their_chain(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Every certificate here comes from an intermediate CA and every side trusts only the
    root: the router's listener and client certificates and the PACS's are chain files."""
    root: CertificateAuthority = pki["ca"]
    issuing = CertificateAuthority(tmp_path / "issuing", "issuing-ca", issuer=root)
    local = {"dns": ("localhost",), "ip": "127.0.0.1", "server": True}
    server = issuing.chain(issuing.issue("router.example", **local))
    pacs_cert = issuing.chain(issuing.issue("pacs.example", **local))
    client = issuing.chain(issuing.issue("router-client"))
    modality = issuing.issue("modality1")
    sources = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE) for _ in range(2)]
    tls_args = ["+tls", str(pacs_cert.key), str(pacs_cert.cert), "+cf", str(root.cert_path),
                "-pw", "-rc"]
    with StoreSCP(tmp_path / "PACS", "PACS", extra_args=tls_args) as pacs:
        destination = {**dicom_destination(pacs), "tls": {
            "mode": "mtls", "ca": str(root.cert_path), "cert": str(client.cert),
            "key": str(client.key), "server_name": "localhost"}}
        config = _listener(pki, "mtls", tmp_path, cert=str(server.cert), key=str(server.key))
        router = start_router({**config, "destinations": {"pacs": destination},
                               "rules": [{"name": "all", "forward": ["pacs"]}]})
        # A modality sending its chain is verified against the root alone.
        sent = run_storescu(sources, LOCALHOST, router.port, called_ae="DICOM-ROUTER",
                            extra_args=["+tls", str(modality.key),
                                        str(issuing.chain(modality).cert), "-pw",
                                        "+cf", str(root.cert_path)])
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: len(pacs.received_files()) == 2), router.log()[-2000:]
    # One sending its leaf only needs the intermediate in the router's `ca`.
    assert _echo(router.port, pki, modality).returncode != 0
    assert _failures(router, "unknown_ca") == 1


def test_a_broken_client_key_renewal_leaves_deliveries_on_the_old_one(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Regression: a destination's key renewed with another certificate's key, then SIGHUP:
    the supervisor refused the reload, but the workers rebuilt their senders from the broken
    files, and every delivery failed with a traceback. The old material must stay in use."""
    pacs_cert: Issued = pki["pacs"]
    client: Issued = pki["router_client"]
    cert, key = tmp_path / "out.crt", tmp_path / "out.key"
    cert.write_bytes(client.cert.read_bytes())
    key.write_bytes(client.key.read_bytes())
    sources = [write_instance(tmp_path / "src", sop_class=CTImageStorage,
                              transfer_syntax=EXPLICIT_VR_LE) for _ in range(2)]
    tls_args = ["+tls", str(pacs_cert.key), str(pacs_cert.cert), "+cf", str(pki["ca"].cert_path),
                "-pw", "-rc"]
    with StoreSCP(tmp_path / "PACS", "PACS", extra_args=tls_args) as pacs:
        destination = {**dicom_destination(pacs), "tls": {
            "mode": "mtls", "ca": str(pki["ca"].cert_path), "cert": str(cert), "key": str(key),
            "server_name": "localhost"}, "retry": {"initial_delay": 0.2, "max_delay": 0.5}}
        router = start_router({"destinations": {"pacs": destination},
                               "rules": [{"name": "all", "forward": ["pacs"]}]})
        assert run_storescu(sources[:1], LOCALHOST, router.port,
                            called_ae="DICOM-ROUTER").returncode == 0
        assert wait_for(lambda: len(pacs.received_files()) == 1)
        key.write_bytes(pki["pacs"].key.read_bytes())  # not the key of out.crt
        os.kill(router.process.pid, signal.SIGHUP)
        workers = len({line.split()[3] for line in router.log().splitlines()
                       if " workers.main: " in line})
        assert wait_for(lambda: router.log().count("SIGHUP: destinations reconnect") >= workers)
        assert run_storescu(sources[1:], LOCALHOST, router.port,
                            called_ae="DICOM-ROUTER").returncode == 0
        assert wait_for(lambda: len(pacs.received_files()) == 2), router.log()[-3000:]
    log = router.log()
    assert "Traceback" not in log and "failed unexpectedly" not in log
    # Once per worker that delivered and per SIGHUP it heeded, not once per attempt.
    refusals = log.count("TLS reload of destinations.pacs.tls refused")
    assert 1 <= refusals <= log.count("SIGHUP: destinations reconnect")


def test_outbound_tls_failure_is_classified_and_retried(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    rogue_ca = CertificateAuthority(tmp_path / "other-ca", "other-ca")
    pacs_cert: Issued = pki["pacs"]
    tls_args = ["+tls", str(pacs_cert.key), str(pacs_cert.cert), "-pw", "-ic"]
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    with StoreSCP(tmp_path / "PACS", "PACS", extra_args=[*tls_args]) as pacs:
        destination = {**dicom_destination(pacs), "tls": {
            "mode": "tls", "ca": str(rogue_ca.cert_path), "server_name": "localhost"},
            "retry": {"initial_delay": 0.2, "max_delay": 0.5}}
        router = start_router({"destinations": {"pacs": destination},
                               "rules": [{"name": "all", "forward": ["pacs"]}]})
        assert run_storescu([source], LOCALHOST, router.port,
                            called_ae="DICOM-ROUTER").returncode == 0
        assert wait_for(lambda: router.metric("dicom_router_retries_total", destination="pacs",
                                              reason="tls") >= 2), router.log()[-2000:]
        assert pacs.received_files() == []


def _accepted_peers(trail: Path) -> list[str]:
    """UserName of the peer in each User Authentication (Login) of the audit trail."""
    messages = [json.loads(line)["AuditMessage"] for line in trail.read_text().splitlines()]
    return [m["ActiveParticipant"][0].get("UserName", "") for m in messages
            if m["EventIdentification"]["EventID"]["csd-code"] == "110114"]


def _fingerprint(issued: Issued) -> str:
    pem = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    return ":".join(f"{byte:02X}" for byte in pem.fingerprint(hashes.SHA256()))


def test_audit_names_the_peer_certificate_unambiguously(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Regression: a CN "Smith, John" was audited as `commonName=Smith, John`, two
    attributes to a reader, and a CN holding ",CN=admin" as a second CN."""
    trail = tmp_path / "audit.jsonl"
    config = {**_listener(pki, "mtls", tmp_path), "audit": {"enabled": True, "path": str(trail)}}
    router = start_router(config)
    smith = pki["ca"].issue("Smith, John,CN=admin", file_stem="smith")
    result = _echo(router.port, pki, smith)
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: trail.exists() and "110114" in trail.read_text())
    (peer,) = _accepted_peers(trail)
    assert peer.startswith("CN=Smith\\, John\\,CN=admin; ")


def test_audit_tells_apart_two_certificates_with_the_same_subject(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Regression: the audit trail named a TLS peer by its subject only, so a certificate
    with a trusted CN from another trusted CA (or a rogue one) read the same."""
    other = CertificateAuthority(tmp_path / "vendor", "vendor-ca")
    both = tmp_path / "both-cas.pem"
    both.write_bytes(pki["ca"].cert_path.read_bytes() + other.cert_path.read_bytes())
    trail = tmp_path / "audit.jsonl"
    config = {**_listener(pki, "mtls", tmp_path, ca=str(both)),
              "audit": {"enabled": True, "path": str(trail)}}
    router = start_router(config)
    twin = other.issue("modality1", file_stem="twin")
    for client in (pki["modality"], twin):
        result = _echo(router.port, pki, client)
        assert result.returncode == 0, result.stderr
    assert wait_for(lambda: trail.exists() and len(_accepted_peers(trail)) == 2)
    assert _accepted_peers(trail) == [
        f"CN=modality1; issuer=CN=hospital-ca; sha256={_fingerprint(pki['modality'])}",
        f"CN=modality1; issuer=CN=vendor-ca; sha256={_fingerprint(twin)}"]


def test_a_refused_tls_reload_is_logged_once(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Regression: a SIGHUP just after the start (the router ready, the acceptor's first
    status snapshot not written yet) was sent to the acceptor again once it reported, and a
    key of another certificate was logged "TLS reload refused" twice."""
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    first: Issued = pki["server"]
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    config = _listener(pki, "tls", tmp_path)
    config["listen"].update(acceptors=1)
    config["listen"]["tls"].update({"cert": str(cert), "key": str(key)})
    router = start_router(config)
    assert router.process is not None
    key.write_bytes(pki["pacs"].key.read_bytes())  # the key of another certificate
    os.kill(router.process.pid, signal.SIGHUP)
    assert wait_for(lambda: "TLS reload refused" in router.log())
    # A SIGHUP owed to the acceptor is sent once it has reported, in the supervisor's turn
    # before it handles the next SIGHUP: by the second refusal, it would have been sent.
    assert wait_for(lambda: "acceptor-1" in router.accepted_by_acceptor())
    os.kill(router.process.pid, signal.SIGHUP)
    assert wait_for(lambda: router.log().count("config reload refused") == 2)
    assert "acceptor-1 was starting during a SIGHUP" not in router.log()
    assert wait_for(lambda: router.log().count("TLS reload refused") >= 2)
    assert router.log().count("TLS reload refused") == 2, router.log()


def _tls_find_upstream(pki: dict[str, Any], port: int) -> Any:
    """A pynetdicom Q/R SCP over mutual TLS that answers every C-FIND with one match."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    def on_find(event: Any) -> Any:
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = "1.2.3"
        yield 0xFF00, match

    pacs: Issued = pki["pacs"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pacs.cert, pacs.key)
    context.load_verify_locations(cafile=pki["ca"].cert_path)
    context.verify_mode = ssl.CERT_REQUIRED
    ae = AE(ae_title="QR")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    return ae.start_server((LOCALHOST, port), block=False, ssl_context=context,
                           evt_handlers=[(evt.EVT_C_FIND, on_find)])


def test_a_relay_upstream_with_broken_tls_material_falls_over_to_the_next(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Regression: an upstream's client key replaced by another one (a rotation half done)
    made a relayed C-FIND log a traceback and answer 0xA700 with a file path, and the next
    upstream of the rule was never tried. It is an upstream failure: the next one answers."""

    client: Issued = pki["router_client"]
    cert, key = tmp_path / "out.crt", tmp_path / "out.key"
    cert.write_bytes(client.cert.read_bytes())
    key.write_bytes(client.key.read_bytes())
    port = free_port()
    server = _tls_find_upstream(pki, port)
    good = {"mode": "mtls", "ca": str(pki["ca"].cert_path), "cert": str(client.cert),
            "key": str(client.key), "server_name": "localhost"}
    try:
        router = start_router({
            "destinations": {
                "qr": {"type": "dicom", "ae_title": "QR", "host": LOCALHOST, "port": port,
                       "tls": {**good, "cert": str(cert), "key": str(key)}},
                "qr2": {"type": "dicom", "ae_title": "QR", "host": LOCALHOST, "port": port,
                        "tls": good}},
            "rules": [{"name": "qr", "query": ["qr", "qr2"]}]})
        key.write_bytes(pki["pacs"].key.read_bytes())  # before the first use of qr
        answers = [(int(status.Status), found) for status, found in _relayed_find(router.port)]
    finally:
        server.shutdown()
    assert answers[-1][0] == 0x0000, (answers, router.log()[-3000:])
    assert [str(found.StudyInstanceUID) for _, found in answers[:-1]] == ["1.2.3"]
    log = router.log()
    assert "Traceback" not in log and "failed unexpectedly" not in log
    assert "TLS material of destinations.qr.tls cannot be used" in log


def test_a_relay_upstream_tls_failure_is_reported_with_its_reason(
    start_router: RouterFactory, pki: dict[str, Any], tmp_path: Path
) -> None:
    """Regression: pynetdicom swallows the SSLError of a relay leg, so a relayed C-FIND
    said "cannot connect to qr" for an upstream certificate the router does not trust, and
    "aborted the association" for a client certificate the upstream refused."""

    rogue = CertificateAuthority(tmp_path / "other-ca", "other-ca")
    port = free_port()
    server = _tls_find_upstream(pki, port)
    upstream = {"type": "dicom", "ae_title": "QR", "host": LOCALHOST, "port": port}
    try:
        router = start_router({
            "destinations": {
                "qr": {**upstream, "tls": {"mode": "tls", "ca": str(rogue.cert_path),
                                           "server_name": "localhost"}},
                "qr2": {**upstream, "tls": {"mode": "tls", "ca": str(pki["ca"].cert_path),
                                            "server_name": "localhost"}}},
            "rules": [{"name": "qr", "query": ["qr", "qr2"]}]})
        answers = [status for status, _ in _relayed_find(router.port)]
    finally:
        server.shutdown()
    assert int(answers[-1].Status) == 0xA700
    assert str(answers[-1].ErrorComment).startswith(
        "no upstream available: qr: TLS with qr failed: unknown_ca"), answers[-1]
    line = next(line for line in router.log().splitlines() if "no upstream answered" in line)
    assert "qr: TLS with qr failed: unknown_ca (self-signed certificate in" in line, line
    # TLS 1.3: the upstream refuses the missing client certificate after the handshake
    assert "qr2: TLS with qr2 failed: no_client_certificate" in line, line


def _relayed_find(port: int) -> list[tuple[Dataset, Dataset | None]]:
    """A study-level C-FIND through the router at `port`: every (status, identifier)."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ae = AE(ae_title="REQUESTER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(FIND)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    assoc = ae.associate(LOCALHOST, port, ae_title="DICOM-ROUTER")
    assert assoc.is_established
    try:
        return list(assoc.send_c_find(query, FIND))
    finally:
        assoc.release()
