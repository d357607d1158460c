"""`rules:` which instances and requests go where, and what is done to them on the way."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from router.core.config.base import (
    Strict,
    StrOrList,
    _check_networks,
    _check_patterns,
    _sop_class_uid,
)
from router.core.deid_spec import DeidentifyConfig
from router.core.durations import DAY, Seconds, at_most
from router.core.morph_spec import MorphAction
from router.core.patterns import compile_pattern


class RuleMatch(Strict):
    calling_ae: StrOrList | None = None
    called_ae: StrOrList | None = None
    # CIDR networks, kept as text (validated here, parsed once when rules are compiled).
    source: list[str] | None = None
    # SOP Class UIDs or their pydicom keywords (e.g. StudyRootQueryRetrieveInformationModelFind).
    sop_class: StrOrList | None = None
    # keyword -> exact value, list of values (any of), or "re:<regex>" (searched).
    tags: dict[str, StrOrList] = {}

    _networks = field_validator("source", mode="before")(_check_networks)
    _patterns = field_validator("calling_ae", "called_ae")(_check_patterns)

    @field_validator("sop_class")
    @classmethod
    def _sop_class_uids(cls, value: StrOrList | None) -> StrOrList | None:
        if value is None:
            return None
        uids = [_sop_class_uid(v) for v in ([value] if isinstance(value, str) else value)]
        _check_patterns(uids)
        return uids

    @field_validator("tags")
    @classmethod
    def _known_keywords(cls, tags: dict[str, StrOrList]) -> dict[str, StrOrList]:
        if tags:
            # Here, not at the top: pydicom's dictionaries cost ~35 MB in every process that
            # imports this module, and the supervisor and broker need pydicom for nothing else.
            from pydicom.datadict import tag_for_keyword
        for keyword, expected in tags.items():
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise ValueError(f"{keyword!r} is not a DICOM keyword (e.g. Modality)")
            unmatchable = _unmatchable(keyword, tag)
            if unmatchable:
                raise ValueError(f"tag {keyword}: {unmatchable}")
            for value in [expected] if isinstance(expected, str) else expected:
                if value.startswith("re:"):
                    try:
                        compile_pattern(value[3:])
                    except ValueError as exc:
                        raise ValueError(f"tag {keyword}: bad regular expression: {exc}") from exc
        return tags


# Values whose text means nothing to a pattern: bytes (read_tags would give their repr).
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}


def _unmatchable(keyword: str, tag: int) -> str:
    """Why a rule on `keyword` could never match, or "": rules read the dataset as the
    acceptor does (router/core/header_tags.py: no file meta, nothing from the pixel data
    on), and compare text, so such a rule would pass check-config and silently never fire."""
    from pydicom.datadict import dictionary_VR

    if tag >> 16 == 0x0002:
        instead = {"MediaStorageSOPClassUID": "use match.sop_class",
                   "TransferSyntaxUID": "no rule matches on a transfer syntax"}.get(
            keyword, "it cannot be matched")
        return f"file meta information (group 0002) is not read by rules; {instead}"
    if tag >= 0x7FE00010:
        return "the pixel data, and what follows it, is not read by rules: it cannot be matched"
    vr = dictionary_VR(tag)
    if vr == "SQ":
        return ("a sequence cannot be matched as a whole; match an attribute outside it "
                "(rules read the top level only)")
    if set(vr.split(" or ")) <= _BINARY_VRS:
        return f"binary data ({vr}) cannot be matched: rules compare text"
    return ""


class CompleteConfig(Strict):
    """Wait until a study or series is stable, then forward it as one batch in order."""

    level: Literal["study", "series"] = "study"
    stable_for: Seconds = Field(60.0, gt=0)  # seconds without a new instance of the group
    # Seconds after its first instance, at the latest; a week at most: past it the spool
    # holds the study for longer than anyone waits.
    deadline: Annotated[float, at_most(7 * DAY, "seconds", "7 days")] = Field(3600.0, gt=0)


class Rule(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    match: RuleMatch = RuleMatch()
    # Where received instances (C-STORE) go: every destination listed.
    forward: list[str] = []
    # Where queries, retrieves and N-services (C-FIND, C-GET, C-MOVE, N-*) go: the first
    # upstream that answers, in this order.
    query: list[str] = []
    # Keep evaluating later rules after this one matched (fan-out across rules).
    continue_: bool = Field(False, alias="continue")
    # forward: route as above; drop: answer Success, keep nothing (counted); reject: answer
    # a failure (0xC004) naming the rule. drop and reject end the evaluation.
    action: Literal["forward", "drop", "reject"] = "forward"
    # Applied to what this rule forwards, before the destination's own.
    morph: list[MorphAction] = []
    deidentify: DeidentifyConfig | None = None
    # urgent work jumps its destinations' queues; "request" takes the C-STORE's own priority.
    priority: Literal["urgent", "high", "normal", "low", "request"] = "request"
    complete: CompleteConfig | None = None

    @model_validator(mode="after")
    def _completion_name_without_bar(self) -> Rule:
        # A completion group is "<rule>|<UID>" in a job's header, read back up to the first
        # '|' (router/broker/completion.py): a completion rule named "CT|MR" held nothing.
        # Other rules may hold any character ("<destination>=<rule>" routes split at the
        # first '=', and a destination name has none).
        if self.complete is not None and "|" in self.name:
            raise ValueError(f"rule name {self.name!r} contains '|', which a rule with "
                             "`complete` may not hold (its completion groups are joined "
                             "with it): rename the rule")
        return self

    @model_validator(mode="after")
    def _routes_somewhere(self) -> Rule:
        if self.action == "forward" and not self.forward and not self.query:
            raise ValueError(f"rule {self.name!r} needs `forward` (instances), `query` "
                             "(queries, retrieves, N-services) or both")
        if self.action != "forward" and (self.forward or self.complete):
            raise ValueError(f"rule {self.name!r}: action {self.action} takes no `forward` "
                             "or `complete`")
        if self.complete is not None and not self.forward:
            raise ValueError(f"rule {self.name!r}: `complete` needs `forward`")
        return self
