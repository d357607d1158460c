"""What to do with a received C-STORE, decided without I/O: drop it, refuse it, or the job to
keep. A pure function of the routing decision, the association and command facts, and the
header tags it needed (router/acceptor/store_handler.py does the acting: spool, broker).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from router.core.config import Rule
from router.core.dimse_status import Status
from router.core.errors import DatasetMismatch, DimseRefusal, NoRoute
from router.core.messages import JobHeader
from router.core.priority import FROM_DIMSE, NORMAL, PRIORITIES
from router.core.rules import AssociationFacts, RouteDecision

# What every C-STORE's header is checked for: the instance the command names.
IDENTITY_KEYWORDS = ("SOPClassUID", "SOPInstanceUID")
# What a completion rule needs from the header: the study or series, and the order.
COMPLETION_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber")


@dataclass(frozen=True)
class StoreCommand:
    """The facts of one C-STORE that are not the association's."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int
    dimse_priority: int  # the request's Priority (0 medium, 1 high, 2 low)


@dataclass(frozen=True)
class Dropped:
    rule: str  # the drop rule: answered Success, nothing kept


@dataclass(frozen=True)
class Keep:
    job: JobHeader


def identity_of(tags: dict[str, str]) -> tuple[str, str]:
    """The dataset's (SOP Class UID, SOP Instance UID) from a header read ('' if absent)."""
    return tags.get("SOPClassUID", ""), tags.get("SOPInstanceUID", "")


def check_identity(command: StoreCommand, dataset: tuple[str, str]) -> None:
    """The dataset (its SOP Class and SOP Instance UIDs) must be the instance its command
    names, as DCMTK's storescp checks: a destination like it would refuse the instance
    (0xA900) and it would dead-letter after Success. Without either UID DCMTK answers 0xC000
    (cannot understand), and so do we."""
    if not all(dataset):
        raise DatasetMismatch("dataset has no SOP Class UID or SOP Instance UID",
                              Status.CANNOT_UNDERSTAND)
    if dataset != (command.sop_class_uid, command.sop_instance_uid):
        which = "Class" if dataset[0] != command.sop_class_uid else "Instance"
        raise DatasetMismatch(f"Dataset does not match SOP Class (SOP {which} UID differs)")


def decide(decision: RouteDecision, facts: AssociationFacts, command: StoreCommand,
           header: Callable[[], dict[str, str]], *, job_id: str, received_at: float,
           peer_port: int, tls_subject: str | None) -> Dropped | Keep:
    """Dropped, Keep(job), or raise the DimseRefusal the sender gets (reject rule, no route).
    `header()` reads the header tags the completion rules need, only if one applies."""
    if decision.action == "drop":
        return Dropped(decision.rules[-1])
    if decision.action == "reject":
        raise DimseRefusal(f"refused by the router's rule {decision.rules[-1]}",
                           Status.REJECTED_BY_RULE)
    if not decision.matched:
        raise NoRoute(f"no routing rule matches (calling AE {facts.calling_ae})")
    groups, instance_number = completion_groups(decision.completes, header)
    job_priority = most_urgent(decision.priorities, command.dimse_priority)
    return Keep(JobHeader(
        job_id=job_id, calling_ae=facts.calling_ae, called_ae=facts.called_ae,
        peer_address=facts.source, peer_port=peer_port,
        sop_class_uid=command.sop_class_uid, sop_instance_uid=command.sop_instance_uid,
        transfer_syntax_uid=command.transfer_syntax_uid, size=command.size,
        received_at=received_at, rules=decision.rules, destinations=decision.destinations,
        tls_subject=tls_subject, priority=job_priority,
        group=groups[0] if groups else "", groups=groups if len(groups) > 1 else (),
        instance_number=instance_number, deidentified=decision.deidentified,
        routes=decision.routes,
        dimse_priorities=destination_priorities(decision, command.dimse_priority, job_priority),
    ))


def destination_priorities(decision: RouteDecision, dimse_priority: int,
                           job_priority: int) -> tuple[str, ...]:
    """"<destination>=<priority>" where the rules that routed the instance there are less
    urgent than the job: a `low` copy-all rule's archive is sent low when a STAT rule made
    the job urgent for its PACS (the job's priority was every destination's before)."""
    if len(set(decision.priorities)) < 2:  # one rule, or rules alike: the job's everywhere
        return ()  # (the common case, on every C-STORE: nothing to work out)
    by_rule = dict(zip(decision.rules, decision.priorities, strict=False))
    levels: dict[str, int] = {}
    for target, _, rule in (route.partition("=") for route in decision.routes):
        level = priority(by_rule.get(rule, "request"), dimse_priority)
        levels[target] = min(level, levels.get(target, level))
    return tuple(f"{d}={level}" for d, level in levels.items() if level != job_priority)


def completion_groups(rules: tuple[Rule, ...], header: Callable[[], dict[str, str]]
                      ) -> tuple[tuple[str, ...], int]:
    """The group of each completion rule that routed the instance (each holds it for its
    own destinations), and its instance number; the header is read once, if any applies."""
    if not rules:
        return (), 0
    tags = header()
    found = [completion_group(rule, tags) for rule in rules]
    groups = tuple(group for group, _ in found if group)
    return groups, next((number for group, number in found if group), 0)


def completion_group(rule: Rule, tags: dict[str, str]) -> tuple[str, int]:
    """("<rule>|<study or series UID>", instance number), or ("", 0) without the UID: such
    an instance cannot join a group and goes on its own, at once."""
    assert rule.complete is not None
    keyword = "StudyInstanceUID" if rule.complete.level == "study" else "SeriesInstanceUID"
    uid = tags.get(keyword, "")
    try:
        number = int(float(tags.get("InstanceNumber", "0") or 0))
    except (ValueError, OverflowError):  # not a number, or infinite
        number = 0
    if not -2**63 <= number < 2**63:  # only orders the batch; past int64 msgpack cannot carry it
        number = 0
    return (f"{rule.name}|{uid}", number) if uid else ("", 0)


def most_urgent(rule_priorities: tuple[str, ...], dimse_priority: int) -> int:
    """The most urgent of the matched rules' priorities: a STAT rule's `urgent` holds even
    when an earlier `continue: true` rule said `low` (only the first one counted before)."""
    return min(priority(p, dimse_priority) for p in rule_priorities or ("request",))


def priority(rule_priority: str, dimse_priority: int) -> int:
    """The rule's priority, or (`request`) the one the sender put on the C-STORE."""
    if rule_priority != "request":
        return PRIORITIES[rule_priority]
    return FROM_DIMSE.get(dimse_priority, NORMAL)
