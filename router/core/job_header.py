"""A job's header: one received instance, the facts of its association and command, and
where it must go. Written to the journal and to jobs/<id>.json, and carried in messages
(router/core/messages.py); to_dict/from_dict are its only form on disk and on the wire."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from router.core.errors import ProtocolError


@dataclass(frozen=True)
class JobHeader:
    """One received instance: the association and command facts, and where it must go."""

    job_id: str
    calling_ae: str
    called_ae: str
    peer_address: str
    peer_port: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int
    received_at: float
    rules: tuple[str, ...]
    destinations: tuple[str, ...]
    tls_subject: str | None = None
    # 0 urgent, 1 high, 2 normal, 3 low: urgent work jumps its destinations' queues.
    priority: int = 2
    # Study/series completion (a rule's `complete`): "<rule>|<study or series UID>", with the
    # instance's number for the batch order; empty when no completion rule routed it.
    group: str = ""
    instance_number: int = 0
    # When several completion rules routed it: each one's group, in rule order (`group` is
    # the first), so that each holds it for its own destinations. Empty otherwise.
    groups: tuple[str, ...] = ()
    # "<destination>=<destination a rule routed it to>" for each destination the job was
    # moved to since (fallback, drain-to, dead-letters replay --to): the rule's morph and
    # de-identification go with it, or a fallback would get the instance as received.
    moved_from: tuple[str, ...] = ()
    # The destinations a rule or the destination itself de-identified for when the job was
    # routed. A worker that no longer finds de-identification for one of them (a reload
    # removed the destination or changed the rule, and the job was replayed elsewhere) makes
    # a dead letter rather than send the instance identified. Empty in the default config.
    deidentified: tuple[str, ...] = ()
    # "<destination>=<rule>" for each rule that routed it to each destination: the worker
    # applies those rules' transforms there even after a reload changed their `forward`.
    # Empty in records written before it: the current config's `forward` says then.
    routes: tuple[str, ...] = ()
    # "<destination>=<priority>" for each destination the rules that routed the job there
    # make less urgent than `priority` (the most urgent of every matched rule, which orders
    # the queues): the DIMSE Priority its C-STORE carries. A low-priority copy of a STAT
    # job is sent as low, not high. Empty when every destination has the job's priority.
    dimse_priorities: tuple[str, ...] = ()
    # With the audit trail on: the study and Patient ID the acceptor read, for the
    # forwarded-instance records (docs/audit.md); empty otherwise, and left out of records.
    study_uid: str = ""
    patient_id: str = ""

    def priority_for(self, destination: str) -> int:
        """The priority `destination`'s C-STORE carries: that of the rules that routed the
        job where it was sent (see routed_as), else the job's."""
        origin = self.routed_as(destination)
        for pair in self.dimse_priorities:
            target, _, level = pair.partition("=")
            if target == origin and level.isdigit():
                return int(level)
        return self.priority

    def routed_by(self, destination: str) -> tuple[str, ...] | None:
        """The rules that routed this job to `destination` (where a rule sent it, not where
        it was moved), in rule order; None for a job recorded without its routes."""
        if not self.routes:
            return None
        return tuple(rule for target, _, rule in (p.partition("=") for p in self.routes)
                     if target == destination)

    def routed_as(self, destination: str) -> str:
        """The destination a rule routed this job to, for `destination`."""
        for pair in self.moved_from:
            target, _, origin = pair.partition("=")
            if target == destination:
                return origin
        return destination

    def moved(self, source: str, target: str) -> tuple[str, ...]:
        """moved_from once the job's part for `source` goes to `target` instead."""
        kept = tuple(p for p in self.moved_from if p.partition("=")[0] != source)
        if target in self.destinations:
            return kept  # it goes there already, as it was routed there
        kept = tuple(p for p in kept if p.partition("=")[0] != target)
        origin = self.routed_as(source)
        return kept if origin == target else (*kept, f"{target}={origin}")

    def to_dict(self) -> dict[str, Any]:
        # By field name, not dataclasses.asdict (a deep copy: 30 µs a header, paid a few
        # times per instance on the hot path); every value is a str, number, None or a
        # tuple of str.
        out = {name: getattr(self, name) for name in _JOB_FIELDS}
        out["rules"] = list(self.rules)
        out["destinations"] = list(self.destinations)
        out["moved_from"] = list(self.moved_from)
        if self.deidentified:
            out["deidentified"] = list(self.deidentified)
        else:  # the records of a config that never de-identifies stay as they were
            del out["deidentified"]
        if self.routes:
            out["routes"] = list(self.routes)
        else:
            del out["routes"]
        if self.groups:
            out["groups"] = list(self.groups)
        else:
            del out["groups"]
        if self.dimse_priorities:
            out["dimse_priorities"] = list(self.dimse_priorities)
        else:
            del out["dimse_priorities"]
        for name in ("study_uid", "patient_id"):
            if not out[name]:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> JobHeader:
        if not isinstance(data, dict):
            raise ProtocolError("job header is not a map")
        for name in ("rules", "destinations", "moved_from", "deidentified", "routes",
                     "groups", "dimse_priorities"):
            items = data.get(name, [])
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ProtocolError(f"job header field {name!r} is not a list of strings")
        try:
            values = {name: data[name] for name in _JOB_FIELDS if name in data}
            values["rules"] = tuple(values.get("rules", ()))
            values["destinations"] = tuple(values["destinations"])
            values["moved_from"] = tuple(values.get("moved_from", ()))
            values["deidentified"] = tuple(values.get("deidentified", ()))
            values["routes"] = tuple(values.get("routes", ()))
            values["groups"] = tuple(values.get("groups", ()))
            values["dimse_priorities"] = tuple(values.get("dimse_priorities", ()))
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"job header is missing or has a bad field: {exc}") from None


_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(JobHeader))
