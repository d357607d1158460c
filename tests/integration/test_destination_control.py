"""Operator control of destinations against the real router (issue 14): pause and resume,
retry, drain-to (durable over kill -9), fallback destinations, and the operator API for dead
letters. Destinations are storescp without --fork: one association at a time."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage

from tests.dcmtk import LOCALHOST, StoreSCP, free_port, run_storescu
from tests.dicom_samples import EXPLICIT_VR_LE, JPEG_BASELINE, dataset_digest, write_instance
from tests.integration.conftest import RouterFactory, dicom_destination
from tests.integration.router_process import ROUTER, RouterProcess, wait_for

pytestmark = pytest.mark.integration

FAST_RETRY = {"max_attempts": 1000, "initial_delay": 0.2, "max_delay": 1.0}


def cli(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, "destinations", "--config", str(router.config_path), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def api(router: RouterProcess, path: str, body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{router.metrics_port}{path}", data=data,
                                     headers={**sent, **(headers or {})},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def row(router: RouterProcess, name: str) -> dict[str, Any]:
    return dict(router.status().get("broker", {}).get("destinations", {}).get(name, {}))


def digests(paths: list[Path]) -> set[str]:
    return {dataset_digest(p) for p in paths}


def instances(folder: Path, count: int) -> list[Path]:
    return [write_instance(folder, sop_class=CTImageStorage, transfer_syntax=EXPLICIT_VR_LE,
                           size_bytes=20_000) for _ in range(count)]


def send(router: RouterProcess, files: list[Path]) -> None:
    sent = run_storescu(files, LOCALHOST, router.port, called_ae="DICOM-ROUTER")
    assert sent.returncode == 0, sent.stderr


def test_pause_holds_deliveries_resume_releases_them_and_pause_survives_a_restart(
        start_router: RouterFactory, storescp: Any, tmp_path: Path) -> None:
    pacs: StoreSCP = storescp("PACS")
    router = start_router({"destinations": {"pacs": {**dicom_destination(pacs),
                                                     "retry": FAST_RETRY}},
                           "rules": [{"name": "all", "forward": ["pacs"]}]})
    paused = cli(router, "pause", "pacs")
    assert paused.returncode == 0 and "pacs paused" in paused.stdout, paused.stderr
    files = instances(tmp_path / "src", 3)
    send(router, files)
    assert wait_for(lambda: row(router, "pacs").get("depth") == 3), row(router, "pacs")
    assert row(router, "pacs")["paused"] is True
    assert "paused by operator" in cli(router, "list").stdout
    time.sleep(1.5)  # deliveries would have gone by now; the queue holds them
    assert pacs.received_files() == []

    router.stop()
    router.start()  # a restart keeps the destination paused (state on the spool)
    assert wait_for(lambda: row(router, "pacs").get("paused") is True), row(router, "pacs")
    assert row(router, "pacs")["depth"] == 3 and pacs.received_files() == []

    resumed = cli(router, "resume", "pacs")
    assert resumed.returncode == 0 and "pacs resumed" in resumed.stdout, resumed.stderr
    assert wait_for(lambda: len(pacs.received_files()) == 3), router.log()[-2000:]
    assert digests(pacs.received_files()) == digests(files)
    assert "operator local" in router.log() and "pause: pacs paused" in router.log()


def test_retry_now_and_errors_are_one_line(start_router: RouterFactory, tmp_path: Path,
                                           storescp: Any) -> None:
    pacs: StoreSCP = storescp("PACS")
    router = start_router({"destinations": {"pacs": dicom_destination(pacs)},
                           "rules": [{"name": "all", "forward": ["pacs"]}]})
    done = cli(router, "retry", "pacs")
    assert done.returncode == 0 and "pacs is tried now" in done.stdout, done.stderr
    for args, message in ((["pause", "nowhere"], "no destination 'nowhere'"),
                          (["drain-to", "pacs", "nowhere"], "not a configured destination"),
                          (["drain-to", "pacs", "pacs"], "into itself")):
        bad = cli(router, *args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_drain_to_moves_the_queue_durably_over_a_crash(
        start_router: RouterFactory, storescp: Any, tmp_path: Path) -> None:
    """Drain A to B (B paused so the jobs wait there), kill -9 everything, restart: the jobs
    go to B, never to A."""
    a: StoreSCP = storescp("AAA")
    b: StoreSCP = storescp("BBB")
    router = start_router({"destinations": {"a": dicom_destination(a),
                                            "b": dicom_destination(b)},
                           "rules": [{"name": "all", "forward": ["a"]}]})
    assert cli(router, "pause", "a").returncode == 0
    assert cli(router, "pause", "b").returncode == 0
    files = instances(tmp_path / "src", 4)
    send(router, files)
    assert wait_for(lambda: row(router, "a").get("depth") == 4)
    drained = cli(router, "drain-to", "a", "b")
    assert drained.returncode == 0 and "moved 4 queued job(s) from a to b" in drained.stdout, \
        drained.stderr
    router.kill_all()
    router.start()
    assert wait_for(lambda: row(router, "b").get("depth") == 4), row(router, "b")
    assert row(router, "a")["depth"] == 0
    assert cli(router, "resume", "a").returncode == 0
    assert cli(router, "resume", "b").returncode == 0
    assert wait_for(lambda: len(b.received_files()) == 4), router.log()[-2000:]
    assert digests(b.received_files()) == digests(files)
    time.sleep(1.0)
    assert a.received_files() == []


def test_fallback_takes_over_and_hands_back(start_router: RouterFactory, storescp: Any,
                                            tmp_path: Path) -> None:
    port = free_port()  # the first destination is down: nothing listens here yet
    backup: StoreSCP = storescp("BACKUP")
    router = start_router({
        "destinations": {
            "pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": port,
                     "retry": FAST_RETRY, "fallback": ["backup"], "fallback_after": 2},
            "backup": dicom_destination(backup)},
        "rules": [{"name": "all", "forward": ["pacs"]}]})
    first = instances(tmp_path / "first", 3)
    send(router, first)
    # After 2 s unavailable, all but the probe go to the fallback.
    assert wait_for(lambda: len(backup.received_files()) == 2), router.log()[-3000:]
    assert wait_for(lambda: row(router, "pacs").get("fallback_to") == "backup")
    assert "fallback to backup" in cli(router, "list").stdout
    with StoreSCP(tmp_path / "PACS", "PACS", port=port) as pacs:
        # Back: the probe arrives, and new work goes to the first destination again.
        assert wait_for(lambda: len(pacs.received_files()) == 1), router.log()[-3000:]
        assert wait_for(lambda: "fallback_to" not in row(router, "pacs"))
        later = instances(tmp_path / "later", 2)
        send(router, later)
        assert wait_for(lambda: len(pacs.received_files()) == 3), router.log()[-3000:]
        assert digests(pacs.received_files()) | digests(backup.received_files()) == \
            digests(first + later)
    assert len(backup.received_files()) == 2
    assert "is back: new work goes to it again" in router.log()


def test_a_de_identifying_rules_queue_keeps_its_transforms_wherever_it_goes(
        start_router: RouterFactory, tmp_path: Path) -> None:
    """A rule that de-identifies and morphs for a destination that is down: what its fallback
    got, and what drain-to and a dead letter's replay --to moved, went out as received,
    patient name and all (the rule was looked up by the new destination, which no rule
    forwards to). Every copy that leaves must be de-identified and morphed."""
    port = free_port()  # down for the whole test
    # +uf: a file per reception (the three routes bring the same de-identified instances).
    with StoreSCP(tmp_path / "BACKUP", "BACKUP", extra_args=["+uf"]) as backup:
        _keeps_its_transforms(start_router, tmp_path, port, backup)


def _keeps_its_transforms(start_router: RouterFactory, tmp_path: Path, port: int,
                          backup: StoreSCP) -> None:
    router = start_router({
        "destinations": {
            "pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": port,
                     "retry": FAST_RETRY, "fallback": ["backup"], "fallback_after": 2},
            "held": {"type": "dicom", "ae_title": "HELD", "host": "127.0.0.1", "port": port},
            # A folder it cannot write: each delivery a dead letter at once.
            "doomed": {"type": "folder", "path": str(tmp_path / "a-file" / "doomed"),
                       "retry": {"max_attempts": 1}},
            "backup": dicom_destination(backup)},
        "rules": [{"name": "anon", "forward": ["pacs", "held", "doomed"], "deidentify": {},
                   "morph": [{"action": "set", "tag": "SeriesNumber", "value": "77"}]}]})
    assert cli(router, "pause", "held").returncode == 0
    (tmp_path / "a-file").write_text("not a folder")
    sources = instances(tmp_path / "src", 3)
    for path in sources:
        ds = dcmread(path)
        ds.PatientName, ds.PatientID, ds.InstitutionName = "SECRET^ALICE", "MRN12345", "St X"
        ds.save_as(path)
    send(router, sources)
    # pacs -> backup by the fallback; held -> backup by drain-to; doomed -> dead letters,
    # replayed to backup.
    assert wait_for(lambda: row(router, "doomed").get("dead_letters_waiting") == 3,
                    timeout=60), router.log()[-3000:]
    drained = cli(router, "drain-to", "held", "backup")
    assert drained.returncode == 0, drained.stderr
    replayed = subprocess.run([*ROUTER, "dead-letters", "--config", str(router.config_path),
                               "replay", "--destination", "doomed", "--to", "backup"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert replayed.returncode == 0, replayed.stderr
    # 2 by the fallback (the third stays as pacs's probe), 1 drained (a job goes to a
    # destination once: 2 of held's 3 went to backup already), 3 replayed (new jobs).
    assert wait_for(lambda: len(backup.received_files()) == 6, timeout=60), \
        router.log()[-3000:]
    received = [dcmread(p) for p in backup.received_files()]
    assert received
    for ds in received:
        assert "SECRET" not in str(ds.PatientName) and ds.PatientID != "MRN12345", ds
        assert ds.SeriesNumber == 77 and ds.get("PatientIdentityRemoved") == "YES"
        assert ds.InstitutionName != "St X"


def test_dead_letter_replay_through_the_api_delivers(start_router: RouterFactory,
                                                     tmp_path: Path, storescp: Any) -> None:
    jpeg = write_instance(tmp_path / "src", sop_class=CTImageStorage,
                          transfer_syntax=JPEG_BASELINE)
    with StoreSCP(tmp_path / "STRICT", "STRICT", extra_args=["+x="]) as strict:
        lenient: StoreSCP = storescp("LENIENT")
        router = start_router({
            "destinations": {"strict": dicom_destination(strict),
                             "lenient": dicom_destination(lenient)},
            "rules": [{"name": "all", "forward": ["strict"]}],
            "audit": {"enabled": True, "path": str(tmp_path / "audit.jsonl")}})
        send(router, [jpeg])

        def listed() -> list[dict[str, Any]]:
            return list(api(router, "/api/dead-letters?destination=strict")[1]["dead_letters"])

        assert wait_for(lambda: len(listed()) == 1), router.log()[-2000:]
        letter = listed()[0]
        code, shown = api(router, f"/api/dead-letters/{letter['id']}")
        assert code == 200 and shown["dead_letters"][0]["reason"] == "transcode"
        # Without the JSON content type (a form a web page could post): refused, kept.
        request = urllib.request.Request(
            f"http://127.0.0.1:{router.metrics_port}/api/dead-letters/{letter['id']}/purge",
            data=b"x=1", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 415 and len(listed()) == 1
        code, body = api(router, f"/api/dead-letters/{letter['id']}/replay", {"to": "nowhere"})
        assert code == 400 and "not a configured destination" in body["error"]
        code, body = api(router, f"/api/dead-letters/{letter['id']}/replay", {"to": "lenient"},
                         headers={"X-Dicom-Router-User": "alice"})
        assert code == 200 and body["count"] == 1, body
        assert wait_for(lambda: len(lenient.received_files()) == 1), router.log()[-2000:]
        assert digests(lenient.received_files()) == {dataset_digest(jpeg)}
        assert listed() == []
        assert "operator API: local:alice from 127.0.0.1: dead letters replay done" \
            in router.log()
    events = [json.loads(line)["AuditMessage"] for line in
              (tmp_path / "audit.jsonl").read_text().splitlines()]
    actions = [e for e in events if e["EventIdentification"].get("EventTypeCode", [{}])[0]
               .get("csd-code") in ("110131", "110132")]
    assert [e["EventIdentification"]["EventOutcomeIndicator"] for e in actions] == \
        ["4", "4", "0"]  # the form post, the unknown target, the replay
    assert actions[-1]["ActiveParticipant"][0]["UserID"] == "local:alice"
    assert actions[-1]["ActiveParticipant"][0]["NetworkAccessPointID"] == "127.0.0.1"


def test_a_token_file_is_required_when_configured(start_router: RouterFactory,
                                                  tmp_path: Path) -> None:
    token = tmp_path / "api.token"
    token.write_text("s3cret-token\n")
    router = start_router({
        "destinations": {"pacs": {"type": "folder", "path": str(tmp_path / "pacs")}},
        "rules": [{"name": "all", "forward": ["pacs"]}],
        "api": {"token_file": str(token)}})
    assert api(router, "/api/destinations")[0] == 403
    code, body = api(router, "/api/destinations/pacs/pause", {},
                     headers={"Authorization": "Bearer wrong"})
    assert code == 403 and body["error"] == "wrong bearer token"
    # The broker publishes its status once a second: it may not have yet, right after start.
    assert wait_for(lambda: row(router, "pacs").get("paused") is False)
    done = cli(router, "pause", "pacs")  # reads api.token_file from the config
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: row(router, "pacs").get("paused") is True)
