"""`dicom-router route-test`: what the router would do with files, without sending them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydicom.uid import RLELossless

from tests.compressed_samples import write_compressed
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance

pytestmark = pytest.mark.integration

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


def route_test(config: Path, *files: Path, calling: str = "CT1"
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "route-test", "--config", str(config),
         "--calling-ae", calling, "--source", "10.1.2.3", *map(str, files)],
        capture_output=True, text=True, timeout=60)


def test_route_test_shows_the_most_urgent_priority_and_each_destinations_hold(
        tmp_path: Path) -> None:
    """One `held until` line above every destination, for the first completion rule only,
    and the first rule's priority: a STAT rule after a `continue: true` low one was shown
    (and routed) low, and pacs as held by the series rule that does not send there."""
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "destinations": {n: {"type": "folder", "path": str(tmp_path / n)}
                         for n in ("archive", "pacs", "plain")},
        "rules": [{"name": "copy-all-low", "continue": True, "forward": ["archive", "plain"],
                   "priority": "low", "complete": {"level": "series", "stable_for": 30}},
                  {"name": "stat-er", "match": {"calling_ae": "ER_CT"}, "forward": ["pacs"],
                   "priority": "urgent", "complete": {"level": "study", "stable_for": 20}}]}))
    ct = write_instance(tmp_path / "ct", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE)
    done = route_test(config, ct, calling="ER_CT")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "priority: urgent (jumps the queue)" in out, out
    archive = out.split("-> archive")[1].split("->")[0]
    pacs = out.split("-> pacs")[1]
    assert "held until the series is stable for 30s" in archive and "rule copy-all-low" in archive
    assert "held until the study is stable for 20s" in pacs and "rule stat-er" in pacs
    assert "series" not in pacs
    assert out.count("held until") == 3  # archive, plain, pacs: under each destination


def test_route_test_explains_each_decision_and_sends_nothing(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "destinations": {
            "pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 9,
                     "transfer_syntaxes": ["ExplicitVRLittleEndian"],
                     "window": {"start": "20:00", "end": "06:00"}},
            "research": {"type": "folder", "path": str(tmp_path / "research"),
                         "deidentify": {}}},
        "rules": [
            {"name": "no-sc", "match": {"sop_class": SC}, "action": "drop"},
            {"name": "ct", "match": {"calling_ae": "CT1", "tags": {"Modality": "CT"}},
             "forward": ["pacs", "research"], "priority": "urgent",
             "morph": [{"action": "prefix", "tag": "AccessionNumber", "value": "RAD-"}],
             "complete": {"level": "series", "stable_for": 30}}]}))
    ct = write_instance(tmp_path / "ct", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                        tags={"Modality": "CT", "AccessionNumber": "A7",
                              "PatientName": "Doe^Jane"})
    rle = write_compressed(tmp_path / "rle", RLELossless, tags={"Modality": "CT"})
    sc = write_instance(tmp_path / "sc", sop_class=SC, transfer_syntax=EXPLICIT_VR_LE)
    done = route_test(config, ct, rle, sc)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "rules matched: ct" in out and "priority: urgent (jumps the queue)" in out
    assert "held until the series is stable for 30s" in out
    assert "morph: AccessionNumber: 'A7' -> 'RAD-A7'" in out
    assert "sent here by rule ct\n" in out
    assert "de-identified (PS3.15 basic profile, as rule ct says" not in out  # the destination's
    assert "de-identified (PS3.15 basic profile, as destination research says, after every " \
        "morph): " in out and "PatientName" in out
    assert "transfer syntax accepted as is" in out
    assert "transcoded RLE Lossless" in out and "-> Explicit VR Little Endian" in out
    assert "only sent between 20:00 and 06:00" in out
    assert "DROP by rule no-sc: answered Success, nothing kept" in out
    assert not (tmp_path / "research").exists(), "route-test wrote to a destination"

    other = route_test(config, ct, calling="MR9")
    assert "NO ROUTE: the sender would get 0xC002" in other.stdout

    junk = tmp_path / "junk.txt"
    junk.write_text("not dicom")
    bad = route_test(config, junk)
    assert bad.returncode == 1, bad.stderr
    assert f"{junk}: not DICOM" in bad.stdout, bad.stdout
    assert "force=True" not in bad.stdout + bad.stderr


def test_instance_without_study_uid_is_stored_where_route_test_says(tmp_path: Path) -> None:
    """Issue 15: acknowledged with Success, then dead-lettered by the folder destination,
    while route-test predicted 'sent byte-exact'. Now both use the folder's placement."""
    from pydicom.data import get_testdata_file

    from tests.dicom_samples import dataset_digest
    from tests.integration.router_process import RouterProcess, wait_for

    source = Path(str(get_testdata_file("JPEGLSNearLossless_16.dcm")))
    sop = "1.2.826.0.1.3680043.8.498.83170309094709282338053441269889264103"
    archive = tmp_path / "archive"
    router = RouterProcess(tmp_path / "router", {
        "destinations": {"archive": {"type": "folder", "path": str(archive)}},
        "rules": [{"name": "all", "forward": ["archive"]}]})
    expected = archive / "_unknown-study" / "_unknown-series" / f"{sop}.dcm"

    predicted = route_test(router.config_path, source)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    assert f"stored as {expected}" in predicted.stdout, predicted.stdout
    assert "no StudyInstanceUID: stored under _unknown-study/" in predicted.stdout
    assert "DEAD LETTER" not in predicted.stdout

    with router:
        sent = subprocess.run(
            [sys.executable, "-m", "router.cli", "send", str(source), "--quiet",
             "--to", f"127.0.0.1:{router.port}", "--called-ae", "DICOM-ROUTER"],
            capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert wait_for(expected.exists, timeout=30), router.log()[-3000:]
        assert wait_for(lambda: not list((router.spool / "jobs").glob("*.dcm")), timeout=30)
    assert dataset_digest(expected) == dataset_digest(source)
    assert not list((router.spool / "dead-letters").glob("*.json"))


def test_route_test_predicts_the_dead_letter_of_a_hostile_study_uid(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "all", "forward": ["archive"]}]}))
    hostile = write_instance(tmp_path / "src", sop_class=CT, transfer_syntax=EXPLICIT_VR_LE,
                             study_uid="../../../x")
    done = route_test(config, hostile)
    assert done.returncode == 0, done.stderr
    # The hostile value is described, never quoted (router/core/uids.py: no log injection).
    assert ("DEAD LETTER (invalid_uid): StudyInstanceUID (10 characters, not only digits and "
            "dots) is not a valid DICOM UID") in done.stdout, done.stdout
    assert "../../../x" not in done.stdout
