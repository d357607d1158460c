"""The broker's view of the config: a DestinationPolicy per destination, the completion
holds per rule, and which destinations have associations to learn."""

from __future__ import annotations

from router.broker.completion import CompletionPolicy, GroupHolds
from router.broker.deliveries import DestinationPolicy
from router.core.config import Destination, DicomDestination, RouterConfig, WindowConfig
from router.core.time_window import TimeWindow, parse_clock


def dicom_names(config: RouterConfig) -> set[str]:
    return {name for name, dest in config.destinations.items()
            if isinstance(dest, DicomDestination)}


def policies(config: RouterConfig) -> dict[str, DestinationPolicy]:
    return {name: _policy(dest) for name, dest in config.destinations.items()}


# The settings that say where and how a destination is reached, by type.
_ADDRESS_KEYS = {
    "dicom": ("ae_title", "host", "port", "calling_ae", "tls"),
    "dicomweb": ("url", "auth", "username", "password_env", "password_file", "token_env",
                 "token_file", "ca", "verify_tls"),
    "folder": ("path",),
}


def _policy(dest: Destination) -> DestinationPolicy:
    window = _window(dest.window)
    address = repr([getattr(dest, key) for key in _ADDRESS_KEYS[dest.type]])
    if not isinstance(dest, DicomDestination):
        # A folder or DICOMweb destination has no associations to learn: max_parallel is it.
        return DestinationPolicy(dest.max_parallel, dest.retry, window,
                                 max_associations=dest.max_parallel, address=address)
    return DestinationPolicy(dest.max_parallel, dest.retry, window, dest.max_associations,
                             dest.probe_interval, dest.idle_timeout, address)


def _window(window: WindowConfig | None) -> TimeWindow | None:
    if window is None:
        return None
    return TimeWindow(parse_clock(window.start), parse_clock(window.end))


def holds(config: RouterConfig) -> GroupHolds:
    return GroupHolds({
        rule.name: CompletionPolicy(rule.complete.stable_for, rule.complete.deadline,
                                    frozenset(rule.forward))
        for rule in config.rules if rule.complete is not None})
