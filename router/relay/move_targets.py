"""Where a C-MOVE goes: whether an upstream's moves are relayed, the move destination's
address by its AE title, and the destinations a relayed move must not reach (it cannot
apply their transforms)."""

from __future__ import annotations

from router.core.config import DestinationBase, DicomDestination, KnownAE, RouterConfig
from router.core.dimse_status import Status

MOVE_DESTINATION_TRANSFORMS = Status.MOVE_DESTINATION_TRANSFORMS


def relays_moves(config: RouterConfig, upstream: str) -> bool:
    """Whether a C-MOVE to this upstream is relayed (move_mode relay) or passed through."""
    dest = config.destinations.get(upstream)
    return isinstance(dest, DicomDestination) and dest.move_mode == "relay"


def move_target(config: RouterConfig, title: str) -> tuple[str, DicomDestination] | None:
    """The router's own table: known_aes, then DICOM destinations by AE title."""
    known: KnownAE | None = config.known_aes.get(title)
    if known is not None:
        return title, DicomDestination(type="dicom", ae_title=title, host=known.host,
                                       port=known.port, tls=known.tls)
    for name, dest in config.destinations.items():
        if isinstance(dest, DicomDestination) and dest.ae_title == title:
            return name, dest
    return None


def relaying_upstream(config: RouterConfig, originator_ae: str | None,
                       calling_ae: str) -> str | None:
    """The relay-mode upstream whose move sub-operation a C-STORE looks like: it calls
    under one of the upstream's AE titles and names the router's calling AE towards it, or
    the upstream itself (pynetdicom does), as Move Originator."""
    originator, calling = (originator_ae or "").strip(), calling_ae.strip()
    for name, dest in config.destinations.items():
        if (isinstance(dest, DicomDestination) and dest.move_mode == "relay"
                and calling in (dest.ae_title, *dest.store_ae_titles)
                and originator in (dest.calling_ae or config.ae_title, dest.ae_title)):
            return name
    return None


def _transforming(config: RouterConfig) -> set[str]:
    """The destinations that de-identify or morph what they get: by their own settings, a
    rule's that forwards to them (the README's research example puts deidentify on the
    rule; checking the destination alone relayed moves to it identified), or as a fallback
    of such a destination (it gets that destination's jobs with their transforms,
    workers/prepare_steps.py; a relayed move to it sent it the files identified)."""
    found = {name for name, dest in config.destinations.items() if _own_transforms(
        config, name, dest)}
    stack = list(found)
    while stack:  # fallbacks of fallbacks: a job moved on keeps where it was routed
        for target in getattr(config.destinations.get(stack.pop()), "fallback", ()):
            if target not in found:
                found.add(target)
                stack.append(target)
    return found


def _own_transforms(config: RouterConfig, name: str, dest: DestinationBase) -> bool:
    # Any type: a folder that de-identifies hands its transforms to a DICOM fallback.
    return (dest.deidentify is not None or bool(dest.morph) or any(
            name in rule.forward and (rule.deidentify is not None or bool(rule.morph))
            for rule in config.rules))


def transforming_destinations(config: RouterConfig, title: str) -> list[str]:
    """The DICOM destinations with this AE title that de-identify or morph what they get.
    The acceptor relays a move's files as they are (it holds no transforms, README
    "Memory"), so a move to such a title would send identified data: it is refused, even
    when known_aes names the title too (most likely the same node)."""
    transforming = _transforming(config)
    return [name for name, dest in config.destinations.items()
            if name in transforming and isinstance(dest, DicomDestination)
            and dest.ae_title == title]


def relay_move_notes(config: RouterConfig) -> list[str]:
    """check-config's notes: destinations a relay-mode C-MOVE could name that the router
    refuses to move to, since it cannot apply their transforms to a relayed move."""
    if not any(relays_moves(config, name) for name in config.destinations):
        return []
    transforming = _transforming(config)
    return [f"destination {name!r} de-identifies or morphs what it gets: a relay-mode C-MOVE "
            f"to its AE title {dest.ae_title} is refused (0x{MOVE_DESTINATION_TRANSFORMS:04X}"
            f"), since a relayed move's instances go as the upstream sent them"
            for name, dest in config.destinations.items()
            if name in transforming and isinstance(dest, DicomDestination)]
