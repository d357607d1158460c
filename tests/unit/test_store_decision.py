"""router/acceptor/store_decision.py: drop, refuse or keep a received C-STORE, without I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from router.acceptor.store_decision import (
    Dropped,
    Keep,
    StoreCommand,
    check_identity,
    completion_group,
    decide,
    identity_of,
)
from router.core.config import Rule
from router.core.dimse_status import Status
from router.core.errors import DatasetMismatch, DimseRefusal, NoRoute
from router.core.messages import JobHeader
from router.core.priority import HIGH, LOW, NORMAL, URGENT
from router.core.rules import AssociationFacts, RouteDecision

FACTS = AssociationFacts(calling_ae="CT1", called_ae="ROUTER", source="10.0.0.7")
COMMAND = StoreCommand("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", 1234, 2)
NO_HEADER: dict[str, str] = {}


def _decide(decision: RouteDecision, header: dict[str, str] | None = None,
            command: StoreCommand = COMMAND) -> Dropped | Keep:
    read: list[int] = []

    def tags() -> dict[str, str]:
        read.append(1)
        return header or {}

    outcome = decide(decision, FACTS, command, tags, job_id="job-1", received_at=100.0,
                     peer_port=4000, tls_subject=None)
    if header is None:
        assert not read, "the header was read although nothing needed it"
    return outcome


def test_a_forward_decision_keeps_a_job_with_every_fact() -> None:
    outcome = _decide(RouteDecision(("ct",), ("pacs", "archive"),
                                    routes=("pacs=ct", "archive=ct")))
    assert isinstance(outcome, Keep)
    assert outcome.job.routes == ("pacs=ct", "archive=ct")  # whose transforms each gets
    job = outcome.job
    assert (job.job_id, job.calling_ae, job.called_ae, job.peer_address, job.peer_port) == (
        "job-1", "CT1", "ROUTER", "10.0.0.7", 4000)
    assert (job.sop_instance_uid, job.size, job.destinations) == ("1.2.3.4", 1234, (
        "pacs", "archive"))
    assert job.priority == LOW  # the request's DIMSE priority 2 (low)
    assert (job.group, job.instance_number) == ("", 0)


def test_drop_and_reject_rules() -> None:
    assert _decide(RouteDecision(("sc",), (), action="drop")) == Dropped("sc")
    with pytest.raises(DimseRefusal) as refused:
        _decide(RouteDecision(("test-ct",), (), action="reject"))
    assert refused.value.status == Status.REJECTED_BY_RULE
    assert "test-ct" in str(refused.value)


def test_no_matching_rule_is_refused_with_no_route() -> None:
    with pytest.raises(NoRoute, match="calling AE CT1"):
        _decide(RouteDecision((), ()))


@pytest.mark.parametrize(("rule_priority", "dimse", "expected"), [
    ("urgent", 0, URGENT), ("high", 2, HIGH), ("request", 1, HIGH), ("request", 0, NORMAL),
    ("request", 7, NORMAL)])
def test_priority_from_the_rule_or_the_request(rule_priority: str, dimse: int,
                                               expected: int) -> None:
    command = replace(COMMAND, dimse_priority=dimse)
    outcome = _decide(RouteDecision(("r",), ("pacs",), priorities=(rule_priority,)),
                      command=command)
    assert isinstance(outcome, Keep) and outcome.job.priority == expected


def test_a_completion_rule_groups_by_study_and_orders_by_instance_number() -> None:
    rule = Rule.model_validate({"name": "studies", "forward": ["pacs"],
                                "complete": {"level": "study"}})
    tags = {"StudyInstanceUID": "1.2.9", "InstanceNumber": "7"}
    outcome = _decide(RouteDecision(("studies",), ("pacs",), completes=(rule,)), tags)
    assert isinstance(outcome, Keep)
    assert (outcome.job.group, outcome.job.instance_number) == ("studies|1.2.9", 7)
    assert outcome.job.groups == ()  # one completion rule: its records stay as they were


@pytest.mark.parametrize(("priorities", "dimse", "expected"), [
    (("low", "urgent"), 2, URGENT), (("low", "request"), 1, HIGH), (("low", "request"), 2, LOW),
    (("request", "normal"), 2, NORMAL)])
def test_the_most_urgent_matched_rule_gives_the_priority(priorities: tuple[str, ...],
                                                         dimse: int, expected: int) -> None:
    """A `continue: true` rule with `priority: low` then a STAT rule with `urgent`: the job
    was low (only the first rule counted), so the STAT instance waited behind routine."""
    command = replace(COMMAND, dimse_priority=dimse)
    outcome = _decide(RouteDecision(("a", "b"), ("archive", "pacs"), priorities=priorities),
                      command=command)
    assert isinstance(outcome, Keep) and outcome.job.priority == expected


def test_each_destination_keeps_the_priority_of_the_rules_that_routed_it_there() -> None:
    """Regression: the job's most urgent priority was every destination's DIMSE Priority,
    so a `low` copy-all rule's archive copy of a STAT instance was sent HIGH. The queue
    order stays the job's; each destination's C-STORE carries its own rules' priority."""
    decision = RouteDecision(("copy-all", "stat", "routine"), ("archive", "pacs", "cloud"),
                             priorities=("low", "urgent", "request"),
                             routes=("archive=copy-all", "pacs=copy-all", "pacs=stat",
                                     "cloud=routine"))
    outcome = _decide(decision, command=replace(COMMAND, dimse_priority=0))  # medium
    assert isinstance(outcome, Keep)
    job = outcome.job
    assert job.priority == URGENT
    assert job.dimse_priorities == ("archive=3", "cloud=2")  # pacs: the job's own
    assert [job.priority_for(d) for d in ("archive", "pacs", "cloud")] == [LOW, URGENT, NORMAL]
    # Moved (fallback, drain-to, replay --to): the priority of where its rules sent it.
    moved = replace(job, destinations=("spare", "pacs", "cloud"), moved_from=("spare=archive",))
    assert moved.priority_for("spare") == LOW
    again = JobHeader.from_dict(job.to_dict())  # journal and messages keep it
    assert again == job and again.priority_for("archive") == LOW
    # A job recorded before (no dimse_priorities), or one rule: the job's, as before.
    assert JobHeader.from_dict({k: v for k, v in job.to_dict().items()
                                if k != "dimse_priorities"}).priority_for("archive") == URGENT
    single = _decide(RouteDecision(("ct",), ("pacs", "archive"), priorities=("low",),
                                   routes=("pacs=ct", "archive=ct")))
    assert isinstance(single, Keep) and single.job.dimse_priorities == ()
    assert "dimse_priorities" not in single.job.to_dict()


def test_each_matched_completion_rule_gives_the_job_its_group() -> None:
    """Only the first completion rule made a group: the second one's destination got each
    instance at once instead of the study as one batch."""
    series = Rule.model_validate({"name": "ai", "forward": ["ai"], "continue": True,
                                  "complete": {"level": "series"}})
    study = Rule.model_validate({"name": "archive", "forward": ["archive"],
                                 "complete": {"level": "study"}})
    tags = {"StudyInstanceUID": "1.2.9", "SeriesInstanceUID": "1.2.9.1", "InstanceNumber": "4"}
    outcome = _decide(RouteDecision(("ai", "archive"), ("ai", "archive"),
                                    completes=(series, study)), tags)
    assert isinstance(outcome, Keep)
    job = outcome.job
    assert (job.group, job.groups, job.instance_number) == (
        "ai|1.2.9.1", ("ai|1.2.9.1", "archive|1.2.9"), 4)
    assert type(job).from_dict(job.to_dict()) == job


def test_without_its_uid_an_instance_goes_on_its_own() -> None:
    rule = Rule.model_validate({"name": "series", "forward": ["pacs"],
                                "complete": {"level": "series"}})
    assert completion_group(rule, {"StudyInstanceUID": "1.2"}) == ("", 0)
    assert completion_group(rule, {"SeriesInstanceUID": "1.3", "InstanceNumber": "x"}) == (
        "series|1.3", 0)


@pytest.mark.parametrize("number", ["inf", "1e99", "-1e30", "nan"])
def test_an_instance_number_no_job_header_can_carry_orders_as_0(number: str) -> None:
    """Regression: InstanceNumber 1e99 (read as a 100-digit integer) went into the job
    header, which msgpack cannot pack: 0x0110 'router internal error'. It only orders the
    batch: 0, as for a missing one."""
    rule = Rule.model_validate({"name": "series", "forward": ["pacs"],
                                "complete": {"level": "series"}})
    assert completion_group(rule, {"SeriesInstanceUID": "1.3", "InstanceNumber": number}) == (
        "series|1.3", 0)


def test_a_dataset_that_is_the_commands_instance_passes() -> None:
    check_identity(COMMAND, (COMMAND.sop_class_uid, COMMAND.sop_instance_uid))


@pytest.mark.parametrize(("tags", "which"), [
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "SOPInstanceUID": "1.2.3.5"}, "Instance"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "SOPInstanceUID": "1.2.3.4"}, "Class"),
])
def test_a_dataset_of_another_instance_is_refused_a900(tags: dict[str, str],
                                                       which: str) -> None:
    """DCMTK's storescp refuses it with 0xA900: Success would end in a dead letter."""
    with pytest.raises(DatasetMismatch) as refused:
        check_identity(COMMAND, identity_of(tags))
    assert refused.value.status == Status.DATASET_DOES_NOT_MATCH == 0xA900
    assert str(refused.value) == f"Dataset does not match SOP Class (SOP {which} UID differs)"
    assert len(str(refused.value)) <= 64  # an ErrorComment (LO)


@pytest.mark.parametrize("tags", [
    {}, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, {"SOPInstanceUID": "1.2.3.4"}])
def test_a_dataset_without_its_sop_uids_is_refused_c000_as_dcmtk_does(
        tags: dict[str, str]) -> None:
    with pytest.raises(DatasetMismatch) as refused:
        check_identity(COMMAND, identity_of(tags))
    assert refused.value.status == Status.CANNOT_UNDERSTAND
    assert "no SOP Class UID or SOP Instance UID" in str(refused.value)
