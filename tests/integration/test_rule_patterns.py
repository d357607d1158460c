"""Rule patterns against a running router: a pattern that cannot finish on a value refuses
that instance at once and stalls nobody else (router/core/patterns.py)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import CTImageStorage
from pynetdicom import AE

from tests.dcmtk import LOCALHOST, StoreSCP
from tests.dicom_samples import EXPLICIT_VR_LE, write_instance
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.router_process import ROUTER, wait_for

StoreSCPFactory = Callable[..., StoreSCP]


def _store(port: int, path: Path, calling_ae: str) -> tuple[int, str]:
    """(status, ErrorComment) of one C-STORE on its own association."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = 60
    ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LE)
    assoc = ae.associate(LOCALHOST, port, ae_title="DICOM-ROUTER")
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(dcmread(path))
        return int(answer.Status), str(answer.get("ErrorComment", ""))
    finally:
        assoc.release()


def test_a_pattern_past_its_deadline_refuses_that_instance_and_stalls_no_one(
    start_router: RouterFactory, storescp: StoreSCPFactory, tmp_path: Path
) -> None:
    """Regression: `^(\\w+\\s?)+$` on a legal 44-character description held the acceptor at
    full CPU for 95 s (other senders could not associate, /readyz said 200); a search has
    a deadline now, and the instance it cuts is refused, never routed as unmatched."""
    pacs = storescp("PACS")
    router = start_router({
        "destinations": {"pacs": dicom_destination(pacs)},
        "rules": [{"name": "words", "match": {"tags": {"StudyDescription": "re:^(a|aa)+$"}},
                   "forward": ["pacs"]},
                  {"name": "hunt", "match": {"tags": {"PatientComments": r"re:^(\w+\s?)+$"}},
                   "forward": ["pacs"]},
                  {"name": "rest", "forward": ["pacs"]}],
    })
    slow = write_instance(tmp_path / "slow", sop_class=CTImageStorage,
                          transfer_syntax=EXPLICIT_VR_LE,
                          tags={"StudyDescription": "a" * 60 + "b"})
    hunt = write_instance(tmp_path / "hunt", sop_class=CTImageStorage,
                          transfer_syntax=EXPLICIT_VR_LE,
                          tags={"PatientComments": "CT THORAX ABDOMEN PELVIS WITH CONTRAST 3MM!"})
    plain = write_instance(tmp_path / "plain", sop_class=CTImageStorage,
                           transfer_syntax=EXPLICIT_VR_LE, tags={"StudyDescription": "CT HEAD"})
    answers: dict[str, tuple[int, str]] = {}

    def send(name: str, path: Path, calling_ae: str) -> None:
        answers[name] = _store(router.port, path, calling_ae)

    senders = [threading.Thread(target=send, args=("slow", slow, "CT1")),
               threading.Thread(target=send, args=("hunt", hunt, "CT2")),
               threading.Thread(target=send, args=("plain", plain, "MR1"))]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)

    assert answers["slow"] == (0xC006, "rule words: pattern took too long on this "
                                       "instance's value"), answers
    assert answers["hunt"] == (0, "") and answers["plain"] == (0, ""), answers
    assert wait_for(lambda: len(pacs.received_files()) == 2), router.log()[-3000:]
    assert router.metric("dicom_router_rule_pattern_timeouts_total", rule="words") == 1
    assert router.metric("dicom_router_instances_received_total",
                         result="pattern_timeout") == 1
    assert "Traceback" not in router.log()

    # route-test says what the sender got.
    done = subprocess.run([*ROUTER, "route-test", "--config", str(router.config_path),
                           str(slow)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REFUSED: the sender would get 0xC006 (rule words: pattern took too long on " \
        "this instance's value)" in done.stdout, done.stdout


def test_an_instance_number_past_a_floats_range_is_refused_naming_it(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """Regression: InstanceNumber '1e999' (IS) under a completion rule raised OverflowError
    out of pydicom: 0x0110 'router internal error' and a traceback in the log."""
    router = start_router({
        "destinations": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": [{"name": "studies", "forward": ["archive"],
                   "complete": {"level": "study", "stable_for": 1}}],
    })
    source = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                            transfer_syntax=EXPLICIT_VR_LE, tags={"InstanceNumber": 12345})
    assert source.read_bytes().count(b"12345") == 1
    source.write_bytes(source.read_bytes().replace(b"12345", b"1e999"))

    # `send` streams the file as it is (DCMTK's storescu would re-encode the element).
    done = subprocess.run([*ROUTER, "send", str(source), "--to", f"{LOCALHOST}:{router.port}"],
                          capture_output=True, text=True, timeout=120, check=False)

    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "0xC000" in output and "InstanceNumber" in output, output
    assert "Traceback" not in router.log() and "0x0110" not in output
