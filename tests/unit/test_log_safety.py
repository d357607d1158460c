"""router/core/log_safety.py: escaping, bounds and rate limits of what reaches the log."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from router.core.log_safety import MAX_KEYS, RepeatLimiter, SafeLogFilter, escape


def record(msg: str, *args: object, name: str = "router.x", level: int = logging.WARNING,
           exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def test_control_characters_are_escaped_and_lines_bounded() -> None:
    assert escape("1.2\n2026 INFO forged\x00\x1b[31m") == "1.2\\x0a2026 INFO forged\\x00\\x1b[31m"
    assert escape("x" * 5000, 100).endswith("... (4900 more characters)")


def test_the_rendered_message_is_escaped() -> None:
    rec = record("refused %s", "AE\r\nforged")
    assert SafeLogFilter(RepeatLimiter(on_suppressed=lambda what: None)).filter(rec)
    assert rec.getMessage() == "refused AE\\x0d\\x0aforged"


def test_pynetdicom_loses_quoted_values_and_tracebacks() -> None:
    rec = record("Invalid 'Called AE Title' value 'a\nb' - must not contain control "
                 "characters", name="pynetdicom.utils", exc=ValueError("'a\nb'"))
    SafeLogFilter(RepeatLimiter(on_suppressed=lambda what: None)).filter(rec)
    assert rec.exc_info is None
    assert rec.getMessage() == ("Invalid 'Called AE Title' value (value not logged) - must not "
                                "contain control characters (ValueError)")


def test_repeats_are_suppressed_counted_and_reported() -> None:
    now = [0.0]
    counted: list[str] = []
    safe = SafeLogFilter(RepeatLimiter(window=60, clock=lambda: now[0],
                                       on_suppressed=counted.append))
    passed = [safe.filter(record("closing connection from %s", "10.0.0.9")) for _ in range(20)]
    assert passed.count(True) == 5 and counted == ["log"] * 15
    now[0] = 61.0
    rec = record("closing connection from %s", "10.0.0.9")
    assert safe.filter(rec)
    assert rec.getMessage().endswith("[15 similar messages were suppressed]")
    assert safe.filter(record("info %s", "x", level=logging.INFO))  # only warnings count


def test_distinct_messages_past_the_table_size_are_dropped_not_remembered() -> None:
    limiter = RepeatLimiter(on_suppressed=lambda what: None)
    allowed = [limiter.allow(("x", i), 5) for i in range(MAX_KEYS + 100)]
    assert allowed.count(False) == 100 and len(limiter._seen) == MAX_KEYS


# SC_rgb_jpeg.dcm says Explicit VR and is Implicit: pydicom warns (warnings.warn) reading it.
WRONG_VR = str(get_testdata_file("SC_rgb_jpeg.dcm"))
WARNING = "Expected explicit VR, but found implicit VR"
READ_IN_A_ROUTER_PROCESS = f"""
from pydicom import dcmread
from router.core.process_util import setup_logging
setup_logging("INFO", {{log_format!r}})
dcmread({WRONG_VR!r}, stop_before_pixels=True)
"""


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_librarys_warning_is_a_log_record_in_the_configured_format(log_format: str) -> None:
    done = subprocess.run([sys.executable, "-c",
                           READ_IN_A_ROUTER_PROCESS.format(log_format=log_format)],
                          capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    # Once: pydicom logs it itself and warns too; the captured warning was a second record
    # with Python's file:line and source line.
    assert sum(WARNING in line for line in lines) == 1, done.stderr
    assert "filereader.py" not in done.stderr, done.stderr
    if log_format == "json":
        assert all(isinstance(json.loads(line), dict) for line in lines), done.stderr
    else:  # every line is a record: "<date> <time> WARNING ..."
        assert all(line[:2] == "20" and " WARNING " in line for line in lines), done.stderr


def test_the_cli_says_a_librarys_warning_in_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "router.cli", "route-test", WRONG_VR],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stderr.splitlines() == [
        f"dicom-router: warning: {WARNING} - using implicit VR for reading"], done.stderr


def test_pydicom_and_python_warnings_lose_quoted_values() -> None:
    """pydicom's "Invalid value for VR UI: '<uid>'" reached the log twice (its own logger
    and py.warnings), the UID and all: only pynetdicom's records were scrubbed."""
    safe = SafeLogFilter(RepeatLimiter(on_suppressed=lambda what: None))
    for name in ("pydicom", "py.warnings"):
        rec = record("Invalid value for VR DA: '1961-02-03'. Please see <https://x>", name=name)
        safe.filter(rec)
        assert rec.getMessage() == ("Invalid value for VR DA: (value not logged). "
                                    "Please see <https://x>")


NAME = "Wolfeschlegelsteinhausenbergerdorff-Smithsonian-Featherstonehaugh-Cholmondeley^John"
BAD_UID = "1.2.826.0.1.3680043.8.498.77.0042.019610203"  # a leading zero: invalid
PREPARE_IN_A_ROUTER_PROCESS = f"""
import logging, sys, warnings
from pathlib import Path
from pydicom import dcmread
from router.core.config import parse_config
from router.core.errors import DeliveryError
from router.core.process_util import setup_logging
from router.core.spool import Spool
from tests.dicom_samples import write_instance
from tests.unit.helpers import make_header
from workers.prepare import Preparer, open_uid_map

setup_logging("INFO", "text")
tmp = Path(sys.argv[1])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    source = write_instance(tmp / "src", sop_class="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax="1.2.840.10008.1.2.1", tags={{
                                "PatientName": {NAME!r}, "PatientID": "MRN4711",
                                "PatientBirthDate": "1961-02-03",
                                "FrameOfReferenceUID": {BAD_UID!r}}})
config = parse_config({{
    "destinations": {{"research": {{"type": "folder", "path": str(tmp / "r"), "deidentify": {{}},
        "morph": [{{"action": "copy", "from": "PatientName",
                    "to": "ClinicalTrialSubjectReadingID"}}]}}}},
    "rules": [{{"name": "numeric", "match": {{"tags": {{"Modality": "MR"}}}},
                "forward": ["research"],
                "morph": [{{"action": "copy", "from": "PatientName", "to": "SeriesNumber"}}]}},
              {{"name": "all", "forward": ["research"]}}]}})
spool = Spool(tmp / "spool").create()
preparer = Preparer(config, spool, lambda: open_uid_map(spool))
for rule in ("all", "numeric"):
    job = make_header(destinations=("research",), rules=(rule,),
                      transfer_syntax_uid="1.2.840.10008.1.2.1")
    try:
        preparer.prepare(job, "research", source).cleanup()
    except DeliveryError as exc:  # as workers/delivery.py logs it, and the dead letter says
        logging.getLogger("workers.delivery").warning("attempt 1: %s", exc)
"""


def test_preparing_an_instance_logs_no_patient_data(tmp_path: Path) -> None:
    """A morph copying a long PatientName logged the name in its VR warning; a copy into a
    numeric attribute put it in the dead letter's detail; pydicom's UID warning logged the
    UID. The log says the attribute and the problem, never the value."""
    done = subprocess.run([sys.executable, "-c", PREPARE_IN_A_ROUTER_PROCESS, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=True,
                          cwd=Path(__file__).parents[2])
    log = done.stderr
    assert "ClinicalTrialSubjectReadingID: The value length" in log, log
    # The copy into SeriesNumber on a de-identified path is refused before the morph runs
    # (workers/prepare.py refuse_leaking_copies): its dead letter names attributes only.
    assert "attempt 1: not sent to research: a morph copies PatientName into SeriesNumber" \
        in log, log
    for value in ("Wolfe", "Smithsonian", "MRN4711", "1961", "019610203",
                  "1.2.826.0.1.3680043.8.498"):
        assert value not in log, log
