"""Client TLS contexts built once per load (router/core/client_tls.py).

Regression: contexts were built from the files at every association, so a key replaced by
another certificate's key broke every delivery and relay with a traceback, even after the
supervisor had refused the reload, and a relayed C-MOVE to a known_aes entry named it
destinations.VIEWER and answered "router internal error"."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage

from router.core.client_tls import ClientContexts
from router.core.config import ClientTLS, parse_config
from router.core.config import DicomDestination as DicomConfig
from router.core.errors import DeliveryError, TLSConfigError
from router.core.messages import JobHeader
from router.core.tls import check_contexts
from router.core.tls_dates import expiry_warnings
from router.dicom.store_sender import DicomDestination
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.pki import CertificateAuthority

DAY = datetime.timedelta(days=1)


def _material(tmp_path: Path) -> tuple[ClientTLS, Path, bytes]:
    """mTLS settings over copies of a client certificate and key, and another key."""
    ca = CertificateAuthority(tmp_path / "ca", "site-ca")
    client, other = ca.issue("router-client"), ca.issue("someone-else")
    cert, key = tmp_path / "out.crt", tmp_path / "out.key"
    cert.write_bytes(client.cert.read_bytes())
    key.write_bytes(client.key.read_bytes())
    return (ClientTLS(mode="mtls", ca=ca.cert_path, cert=cert, key=key), key,
            other.key.read_bytes())


def test_a_broken_renewal_keeps_the_last_good_context_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls, key, other_key = _material(tmp_path)
    contexts = ClientContexts()
    first = contexts.get(tls, "destinations.pacs.tls")
    assert contexts.get(tls, "destinations.pacs.tls") is first  # not rebuilt per association
    key.write_bytes(other_key)
    contexts.request_reload()
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert contexts.get(tls, "destinations.pacs.tls") is first
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 1
    assert refusals[0].startswith("TLS reload of destinations.pacs.tls refused, the previous "
                                  "certificates stay in use: destinations.pacs.tls.key:")


def test_material_that_never_loaded_is_an_error_until_a_reload_fixes_it(tmp_path: Path) -> None:
    tls, key, other_key = _material(tmp_path)
    good = key.read_bytes()
    key.write_bytes(other_key)
    contexts = ClientContexts()
    for _ in range(2):
        with pytest.raises(TLSConfigError, match="is not the key of the certificate"):
            contexts.get(tls, "known_aes.VIEWER.tls")
    key.write_bytes(good)
    contexts.request_reload()
    assert contexts.get(tls, "known_aes.VIEWER.tls") is not None


def test_a_sender_with_unusable_material_fails_as_tls_naming_its_config_key(
    tmp_path: Path
) -> None:
    tls, key, other_key = _material(tmp_path)
    key.write_bytes(other_key)
    config = DicomConfig(type="dicom", ae_title="VIEWER", host="127.0.0.1", port=9, tls=tls)
    sender = DicomDestination("VIEWER", config, "ROUTER", tls_key="known_aes.VIEWER.tls")
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE)
    job = JobHeader("j1", "MOD", "ROUTER", "127.0.0.1", 104, "", "", "",
                    source.stat().st_size, 0.0, (), ("VIEWER",))
    with pytest.raises(DeliveryError) as caught:
        sender.send(job, source)
    assert (caught.value.reason, caught.value.transient) == ("tls", True)
    assert "known_aes.VIEWER.tls" in str(caught.value)
    assert str(tmp_path) not in str(caught.value)
    # A relayed C-MOVE's sub-operation fails at once: retrying it until the move's deadline
    # left the requester without an answer.
    once = DicomDestination("VIEWER", config, "ROUTER", tls_key="known_aes.VIEWER.tls",
                            retry_unusable_tls=False)
    with pytest.raises(DeliveryError) as caught:
        once.send(job, source)
    assert (caught.value.reason, caught.value.transient) == ("tls", False)


@pytest.mark.parametrize(("valid", "says"), [
    ((-10 * DAY, -DAY), "expired on"),
    ((2 * DAY, 30 * DAY), "is not valid before"),
])
def test_a_renewal_to_an_out_of_date_certificate_keeps_the_last_good_one(
    valid: tuple[datetime.timedelta, datetime.timedelta], says: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a client certificate rotated in place to an expired (or not yet valid)
    one loaded without a word on SIGHUP, and every delivery to the destination then failed
    with the peer refusing the router's certificate, the good one dropped."""
    tls, key, _ = _material(tmp_path)
    stale = CertificateAuthority(tmp_path / "other", "site-ca").issue("router-client",
                                                                       valid=valid)
    contexts = ClientContexts()
    first = contexts.get(tls, "destinations.pacs.tls")
    assert tls.cert is not None
    tls.cert.write_bytes(stale.cert.read_bytes())
    key.write_bytes(stale.key.read_bytes())
    contexts.request_reload()
    with caplog.at_level(logging.ERROR):
        assert contexts.get(tls, "destinations.pacs.tls") is first
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 1
    assert refusals[0].startswith(
        "TLS reload of destinations.pacs.tls refused, the previous certificates stay in use: "
        f"destinations.pacs.tls.cert: {tls.cert} {says}")
    assert "the peer would refuse it" in refusals[0]
    # Where nothing is in use yet (a start, a restarted worker) it is taken, and check-config,
    # run and a config reload warn of it: refusing it would stop the whole router for one
    # destination's certificate, and a lax peer may accept it.
    assert ClientContexts().get(tls, "destinations.pacs.tls") is not None
    config = parse_config({"destinations": {"pacs": {
        "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
        "tls": {"mode": "mtls", "ca": str(tls.ca), "cert": str(tls.cert), "key": str(key)}}},
        "rules": [{"name": "all", "forward": ["pacs"]}]})
    check_contexts(config)
    assert [note.split(f" {says} ")[0] for note in expiry_warnings(config)] == [
        f"destinations.pacs.tls.cert: {tls.cert}"]
