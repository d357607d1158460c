"""router/service/console/audit_tail.py: the Audit page keeps operator actions, logins and
refusals however much transfer traffic followed them, and reads a bounded end of the file."""

from __future__ import annotations

from pathlib import Path

from router.audit.encoding import to_json_line
from router.audit.messages import (
    LocalApplication,
    instances_transferred,
    user_authentication,
)
from router.audit.operator import operator_action
from router.core.config import default_config
from router.service.console.audit_tail import read_tail
from router.service.console.auth import Identity
from router.service.console.views_rules import audit

APP = LocalApplication("ROUTER", "router-1")


def transfer(i: int) -> str:
    return to_json_line(instances_transferred(
        APP, calling_ae="MODALITY", called_ae="ROUTER", peer_address="10.0.0.5",
        study_uid=f"1.2.3.{i}", sop_classes={"1.2.840.10008.5.1.4.1.1.2": 1}, outcome_ok=True))


def accepted() -> str:
    return to_json_line(user_authentication(APP, calling_ae="MODALITY", called_ae="ROUTER",
                                            peer_address="10.0.0.5"))


def action(what: str) -> str:
    return to_json_line(operator_action(APP, user="console:alice", address="10.0.0.9",
                                        action=what, detail="done", ok=True))


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_operator_actions_stay_on_the_page_after_many_transfers(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    traffic = [line for i in range(3000) for line in (accepted(), transfer(i))]
    write(path, [action("console login"), action("pause pacs"), *traffic,
                 action("resume pacs"), *traffic[:500]])
    config = default_config()
    config = config.model_copy(update={"audit": config.audit.model_copy(
        update={"enabled": True, "path": path})})
    page = audit(Identity("alice", "operator", "t"), config, {}).body.decode()
    for what in ("console login", "pause pacs", "resume pacs"):
        assert f"{what}: done" in page
    tail = read_tail(path)
    assert [ev["EventIdentification"]["EventOutcomeDescription"] for ev in tail.notable] == [
        "resume pacs: done", "pause pacs: done", "console login: done"]
    assert len(tail.recent) == 50 and tail.whole


def test_the_page_reads_a_bounded_end_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, [action("pause pacs"), *[transfer(i) for i in range(2000)],
                 action("resume pacs"), *[transfer(i) for i in range(10)]])
    tail = read_tail(path, scan_max=64 * 1024)
    assert [ev["EventIdentification"]["EventOutcomeDescription"] for ev in tail.notable] == [
        "resume pacs: done"]
    assert not tail.whole and len(tail.recent) == 50
    assert read_tail(tmp_path / "missing.jsonl").notable == []
