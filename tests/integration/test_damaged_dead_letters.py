"""A dead-letter record that cannot be read (truncated by a disk error, a hand edit that is
not JSON) made GET /api/dead-letters answer 400 for every letter, and the CLI and console
lists fail with it. A real router makes four dead letters at its start (their destination is
no longer configured); the test damages two: the others stay listed, the damaged ones are
shown as such (file and why), show and replay say what is wrong, purge removes them."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from router.core.spool import Spool
from tests.integration.console_client import ConsoleClient, console_users
from tests.integration.router_process import ROUTER, RouterProcess, wait_for
from tests.unit.helpers import make_header

pytestmark = pytest.mark.integration


def api(router: RouterProcess, path: str, post: bool = False) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{router.metrics_port}{path}", data=b"{}" if post else None,
        headers={"Content-Type": "application/json"} if post else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def cli(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, "dead-letters", "--config", str(router.config_path), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_damaged_record_is_shown_as_such_and_hides_no_other(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "router" / "spool").create()
    pending = []
    for n in range(4):
        received = spool.incoming / f"{n}.tmp"
        received.write_bytes(b"DICM")
        pending.append(spool.stage_commit(make_header(f"{n:016x}cccccccc", ("gone",)), received))
    for commit in pending:
        commit.wait()
    config = {"destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
              "rules": [{"name": "all", "forward": ["keep"]}],
              "console": {"enabled": True, "users": console_users()}}
    ids = [f"{n:016x}cccccccc.gone" for n in range(4)]
    with RouterProcess(tmp_path / "router", config) as router:
        assert wait_for(lambda: api(router, "/api/dead-letters")[1].get("total") == 4), \
            router.log()[-3000:]
        truncated, garbage = (spool.dead_letters / f"{i}.json" for i in ids[:2])
        truncated.write_bytes(truncated.read_bytes()[:40])
        garbage.write_text("hand edited, not JSON\n")

        for query in ("", "?destination=gone", "?limit=1", "?calling_ae=CT1"):
            code, body = api(router, f"/api/dead-letters{query}")
            assert code == 200, (query, body)
        code, body = api(router, "/api/dead-letters")
        assert [d["id"] for d in body["dead_letters"]] == ids[2:]
        assert body["unreadable_count"] == 2
        assert [(d["id"], d["file"]) for d in body["unreadable"]] == [
            (ids[0], str(truncated)), (ids[1], str(garbage))]
        assert all("not JSON" in d["why"] or "JSON" in d["why"] for d in body["unreadable"])
        code, body = api(router, "/api/dead-letters?destination=gone")
        assert [d["id"] for d in body["dead_letters"]] == ids[2:] and body["unreadable_count"]

        code, body = api(router, f"/api/dead-letters/{ids[0]}")
        assert code == 400 and "cannot be read" in body["error"], body
        code, body = api(router, f"/api/dead-letters/{ids[0]}/replay", post=True)
        assert code == 400 and "purge it" in body["error"], body
        assert truncated.exists()

        listed = cli(router, "list")
        assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed
        assert all(i in listed.stdout for i in ids[2:]), listed.stdout
        assert f"unreadable dead letter {ids[0]}" in listed.stdout, listed.stdout
        as_json = cli(router, "list", "--json")
        assert as_json.returncode == 0, as_json
        assert [json.loads(line)["id"] for line in as_json.stdout.splitlines()] == ids[2:]
        assert f"unreadable dead letter {ids[1]}" in as_json.stderr
        for action in ("show", "replay"):
            shown = cli(router, action, ids[1])
            assert shown.returncode == 2 and "Traceback" not in shown.stderr, shown
            assert "cannot be read" in shown.stderr and str(garbage) in shown.stderr, shown

        viewer = ConsoleClient(f"http://127.0.0.1:{router.metrics_port}")
        assert viewer.login("victor") == 303
        status, page, _ = viewer.request("/console/dead-letters")
        assert status == 200 and all(i in page for i in ids), page[-2000:]
        assert "cannot be read" in page
        status, page, _ = viewer.request(f"/console/dead-letters/{ids[0]}")
        assert status == 200 and "cannot be read" in page, page[-2000:]

        # Logged once by the process that serves the API and the console, however often read.
        warnings = [line for line in router.log().splitlines()
                    if "listed as unreadable" in line and ids[0] in line]
        assert len(warnings) == 1, warnings

        code, body = api(router, f"/api/dead-letters/{ids[0]}/purge", post=True)
        assert code == 200 and body["dead_letters"] == [{"id": ids[0]}], body
        purged = cli(router, "purge", ids[1])
        assert purged.returncode == 0 and "1 dead letters purged" in purged.stdout, purged
        assert not truncated.exists() and not garbage.exists()
        assert not (spool.dead_letters / f"{ids[0].split('.')[0]}.dcm").exists()
        code, body = api(router, "/api/dead-letters")
        assert [d["id"] for d in body["dead_letters"]] == ids[2:], body
        assert (body["unreadable"], body["unreadable_count"]) == ([], 0)
