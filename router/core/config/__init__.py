"""The router's one validated config model. Unknown keys are errors that name the key.

One typed model, split by section: base.py, listen.py, service.py, destinations.py,
rules.py and router.py (the whole, and loading it)."""

from router.core.config.base import (
    DEFAULT_MAX_PDU,
    AETitle,
    Strict,
    StrOrList,
    _check_ae_title,
    _check_networks,
    _sop_class_uid,
    _transfer_syntax_uid,
)
from router.core.config.destinations import (
    Destination,
    DestinationBase,
    DicomDestination,
    DicomWebDestination,
    FolderDestination,
    KnownAE,
    RetryConfig,
    WindowConfig,
    _destination_type,
)
from router.core.config.listen import (
    ClientTLS,
    ListenConfig,
    ListenerTLS,
    TLSBase,
    UserConfig,
)
from router.core.config.router import (
    _JOINER,
    RouterConfig,
    _location,
    _problems,
    _raw_reference_problems,
    default_config,
    load_config,
    parse_config,
    reference_problems,
    summary,
)
from router.core.config.rules import (
    CompleteConfig,
    Rule,
    RuleMatch,
)
from router.core.config.service import (
    ApiConfig,
    MetricsConfig,
    QueueConfig,
    SpoolConfig,
)

__all__ = [
    "DEFAULT_MAX_PDU",
    "_JOINER",
    "AETitle",
    "ApiConfig",
    "ClientTLS",
    "CompleteConfig",
    "Destination",
    "DestinationBase",
    "DicomDestination",
    "DicomWebDestination",
    "FolderDestination",
    "KnownAE",
    "ListenConfig",
    "ListenerTLS",
    "MetricsConfig",
    "QueueConfig",
    "RetryConfig",
    "RouterConfig",
    "Rule",
    "RuleMatch",
    "SpoolConfig",
    "StrOrList",
    "Strict",
    "TLSBase",
    "UserConfig",
    "WindowConfig",
    "_check_ae_title",
    "_check_networks",
    "_destination_type",
    "_location",
    "_problems",
    "_raw_reference_problems",
    "_sop_class_uid",
    "_transfer_syntax_uid",
    "default_config",
    "load_config",
    "parse_config",
    "reference_problems",
    "summary",
]
