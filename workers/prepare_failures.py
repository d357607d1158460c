"""The failures of preparing a delivery (workers/prepare.py), as the DeliveryError each is:
its reason, whether it is retried, and words an operator can act on, without the values of
the instance (route-test predicts the same ones)."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

from router.core.errors import DeliveryError
from router.core.log_safety import without_values
from router.core.messages import JobHeader


def deidentify_lost(job: JobHeader, destination: str) -> DeliveryError:
    """The dead letter of a job routed to be de-identified whose settings are gone: sent,
    it would leave identified (fail closed; route-test has no such job)."""
    origin = job.routed_as(destination)
    return DeliveryError(
        "deidentify", f"the de-identification settings it was routed with (to {origin}) "
        f"are gone (a reload changed the rule or removed the destination): not sent "
        f"identified; replay it --to a destination that de-identifies itself (its own "
        f"`deidentify`)", transient=False)


def rule_gone(job: JobHeader, destination: str, names: Sequence[str]) -> DeliveryError:
    """The dead letter of a job whose routing rule is gone: sent, it would leave without
    that rule's morph (or de-identification), so it fails closed as deidentify_lost does."""
    which = ", ".join(names)
    return DeliveryError(
        "morph", f"rule {which} that routed it to {job.routed_as(destination)} is no longer "
        f"in the config (a reload removed or renamed it): not sent without its morph; "
        f"replay it once the rule is back, or --to a destination whose settings suit it",
        transient=False)


def morph_failure(exc: Exception, morph_by: Sequence[str] = ()) -> DeliveryError:
    """The dead letter of a morph this instance cannot take (route-test predicts the same).
    Without the values pydicom's or Python's message quotes: the detail is logged. A
    replace pattern past its deadline names whose morph it is (`morph_by`, one per action):
    retried, it would take as long again, so the config is what to fix, then replay."""
    index = getattr(exc, "index", None)  # workers.transforms.morph.MorphTooSlow
    if index is not None:
        return DeliveryError("morph", f"{morph_owner(morph_by, index)}: morph {exc}; fix the "
                             f"pattern and replay", transient=False)
    return DeliveryError("morph", f"morphing failed: {without_values(str(exc))}",
                         transient=False)


def morph_owner(morph_by: Sequence[str], index: int) -> str:
    """Whose morph action `index` is: "rule X" or "destination Y"."""
    return morph_by[index] if 0 <= index < len(morph_by) else "a morph"


def deidentify_failure(exc: Exception) -> DeliveryError:
    """The dead letter of an instance that cannot be de-identified (route-test's too)."""
    from workers.transforms.burned_in_pixels import BurnedInAnnotationRefused

    if isinstance(exc, BurnedInAnnotationRefused):  # the router's own words, no value
        return DeliveryError("deidentify", str(exc), transient=False)
    return DeliveryError("deidentify",
                         f"de-identification failed: {without_values(str(exc))}",
                         transient=False)


def spool_write_failure(exc: OSError, relay: Path) -> DeliveryError:
    """The copy a step writes in the spool's relay folder failed (ENOSPC, EDQUOT, EROFS,
    EIO...): the router's own disk, neither the instance's fault nor the destination's, so
    the broker lets the delivery wait without spending an attempt (README "Retries")."""
    code = errno.errorcode.get(exc.errno or 0, "")
    why = f"{code} {exc.strerror}" if code and exc.strerror else str(exc)
    return DeliveryError("spool_write", f"cannot write in the spool ({exc.filename or relay}): "
                         f"{why}", transient=True)


def unreadable_source(source: Path) -> OSError | None:
    """Why the received instance's file cannot be read to its end (EIO: a bad sector), or
    None: told apart this way because an OSError out of a step does not say whether it came
    from reading the source or writing the copy. Read again only after a step failed."""
    try:
        with open(source, "rb", buffering=0) as fh:
            while fh.read(1 << 20):
                pass
    except OSError as exc:
        return exc
    return None


def spool_read_failure(exc: OSError, source: Path) -> DeliveryError:
    """The received instance's own file cannot be read: this job is retried (attempts
    spent) and then a dead letter, as when its C-STORE cannot read it; the copies of other
    instances, which the spool still takes, do not wait for it."""
    return DeliveryError("spool_read", f"reading {source.name} from the spool failed: "
                         f"{exc.strerror or exc}", transient=True)
