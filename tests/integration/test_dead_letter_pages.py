"""GET /api/dead-letters in pages (router/service/control_api.py): the whole list was 41 MB
of JSON at 50,000 dead letters, built in memory by the process serving the console. A real
router makes 300 dead letters at its start (their destination is no longer configured) and
the API is walked with a small limit."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from router.core.spool import Spool
from tests.integration.router_process import RouterProcess, wait_for
from tests.unit.helpers import make_header

pytestmark = pytest.mark.integration

COUNT = 300


def get(router: RouterProcess, query: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{router.metrics_port}/api/dead-letters?{query}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def walk(router: RouterProcess, query: str) -> tuple[list[str], set[int]]:
    """Every page's ids in order, and the totals the pages said."""
    ids: list[str] = []
    totals: set[int] = set()
    after = ""
    while True:
        code, body = get(router, f"{query}&after={after}")
        assert code == 200, body
        ids += [d["id"] for d in body["dead_letters"]]
        totals.add(body["total"])
        if body["next"] is None:
            return ids, totals
        assert body["next"] == ids[-1]
        after = body["next"]


def test_dead_letters_are_listed_page_by_page(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "router" / "spool").create()
    pending = []
    for n in range(COUNT):
        received = spool.incoming / f"{n}.tmp"
        received.write_bytes(b"DICM")
        header = make_header(f"{n:016x}bbbbbbbb", ("gone",), sop_instance_uid=f"1.2.3.{n}",
                             calling_ae="CT1" if n % 3 else "MR2")
        pending.append(spool.stage_commit(header, received))
    for commit in pending:
        commit.wait()
    config = {"destinations": {"keep": {"type": "folder", "path": str(tmp_path / "keep")}},
              "rules": [{"name": "all", "forward": ["keep"]}]}
    with RouterProcess(tmp_path / "router", config) as router:
        assert wait_for(lambda: get(router, "limit=1")[1].get("total") == COUNT), \
            router.log()[-3000:]
        expected = sorted(f"{n:016x}bbbbbbbb.gone" for n in range(COUNT))

        code, first = get(router, "limit=70")
        assert code == 200, first
        assert [d["id"] for d in first["dead_letters"]] == expected[:70]
        assert (first["total"], first["limit"], first["next"]) == (COUNT, 70, expected[69])
        code, default = get(router, "")
        assert (code, len(default["dead_letters"]), default["next"]) == (200, COUNT, None)

        assert walk(router, "limit=70") == (expected, {COUNT})
        # A filter counts and pages what it matches (read from each record).
        mr2 = sorted(f"{n:016x}bbbbbbbb.gone" for n in range(0, COUNT, 3))
        assert walk(router, "limit=33&calling_ae=MR2") == (mr2, {len(mr2)})
        assert walk(router, "limit=70&destination=gone&reason=unknown_destination") == (
            expected, {COUNT})
        assert walk(router, "limit=70&destination=keep") == ([], {0})

        # The cursor is an id, not a position: letters purged before it shift nothing.
        code, page = get(router, "limit=50")
        for letter_id in expected[:10]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{router.metrics_port}/api/dead-letters/{letter_id}/purge",
                data=b"", headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
        code, following = get(router, f"limit=50&after={page['next']}")
        assert [d["id"] for d in following["dead_letters"]] == expected[50:100]
        assert following["total"] == COUNT - 10

        for query, why in (("limit=0", "limit='0'"), ("limit=5001", "limit='5001'"),
                           ("limit=ten", "limit='ten'"), ("limit=-1", "limit='-1'"),
                           ("after=../../etc", "is not a dead letter id"),
                           ("older_than=soon", "is not an age")):
            code, body = get(router, query)
            assert code == 400 and why in body["error"], (query, body)
        assert "Traceback" not in router.log()
