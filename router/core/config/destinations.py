"""`destinations:` where instances go (DICOM, folder, DICOMweb), with retries, windows and
`known_aes:` for relayed C-MOVEs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from router.core.bounds import between
from router.core.config.base import DEFAULT_MAX_PDU, Strict, _check_ae_title, _transfer_syntax_uid
from router.core.config.listen import ClientTLS
from router.core.deid_spec import DeidentifyConfig
from router.core.dicomweb_spec import DicomWebFields
from router.core.durations import Seconds
from router.core.hosts import Host
from router.core.morph_spec import MorphAction

# Associations (or deliveries) to one destination at once: no PACS takes more.
MAX_PARALLEL = 256


class RetryConfig(Strict):
    # 1000 at most: the backoff doubles per attempt, and 2.0 ** 1024 overflows.
    max_attempts: Annotated[int, between(1, 1000)] = 10
    initial_delay: Seconds = Field(1.0, gt=0)
    max_delay: Seconds = Field(300.0, gt=0)


class WindowConfig(Strict):
    """A daily time window (local time) when a destination may receive; across midnight when
    `end` is before `start` (off-peak 20:00-06:00)."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        from router.core.time_window import parse_clock

        parse_clock(value)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> WindowConfig:
        from router.core.time_window import parse_clock

        # start == end is no window at all: it would never open and the queue would grow
        # until senders get 0xA700.
        if parse_clock(self.start) == parse_clock(self.end):
            raise ValueError("start and end are equal (an empty window); leave window out "
                             "for always")
        return self


def _not_blank(what: str) -> Any:
    """A validator refusing an empty string before it becomes Path('.') or a host of ''."""
    def check(value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"empty: give {what}")
        return value
    return check


class DestinationBase(Strict):
    retry: RetryConfig = RetryConfig()
    # How many deliveries to this destination may run at once across all workers (the upper
    # bound of the association limit a DICOM destination learns: router/broker/concurrency.py).
    max_parallel: Annotated[int, between(1, MAX_PARALLEL)] = 4
    # A new reception of bytes this destination already got within spool.duplicate_window:
    # send (default: a re-send is new work) or skip (suppressed and counted).
    on_duplicate: Literal["send", "skip"] = "send"
    # Outside this window the destination's queue is held (nothing sent, nothing lost).
    window: WindowConfig | None = None
    # Applied to what this destination gets, after the routing rule's (README "Routing rules").
    morph: list[MorphAction] = []
    deidentify: DeidentifyConfig | None = None
    # Destinations that take this one's queue after it has been unavailable (connection or
    # association failures) for `fallback_after` seconds (README "Fallback destinations").
    fallback: list[str] = []
    fallback_after: Seconds = Field(300.0, gt=0)


class DicomDestination(DestinationBase):
    type: Literal["dicom"]
    ae_title: str
    host: Host
    port: int = Field(ge=1, le=65535)
    # The calling AE the router presents; defaults to the router's own ae_title.
    calling_ae: str | None = None
    max_pdu: int = Field(DEFAULT_MAX_PDU, ge=4096, le=4_194_304)
    connect_timeout: Seconds = Field(10.0, gt=0)
    acse_timeout: Seconds = Field(30.0, gt=0)
    dimse_timeout: Seconds = Field(60.0, gt=0)
    # A pooled association unused for this long is released, so that a destination that
    # serves one association at a time is free for the next one (and for other senders).
    idle_timeout: Seconds = Field(2.0, gt=0)
    # Pins how many associations the router opens to it; unset, the router learns it (from 1
    # up to max_parallel): a refused or unanswered association while one is open means busy.
    max_associations: Annotated[int, between(1, MAX_PARALLEL)] | None = None
    # How long to wait for an A-ASSOCIATE-AC while the router holds another association to
    # this destination; no answer within it means busy, not down. Below idle_timeout: a
    # destination that serves one association at a time answers a second one as soon as our
    # first is released, so a longer wait after a short burst would see an answer, never
    # "busy", and the router would not learn the limit (3 s against 2 s did just that).
    busy_timeout: Seconds = Field(1.5, gt=0)
    # After a busy answer, how long before the router tries one association more.
    probe_interval: Seconds = Field(60.0, gt=0)
    tls: ClientTLS = ClientTLS()
    # C-MOVE through the router (README "Query and retrieve"): pass_through asks this
    # upstream to send to the requested destination itself (it must know that AE); relay asks
    # it to send to the router, which delivers to the destination from its own AE table.
    move_mode: Literal["pass_through", "relay"] = "pass_through"
    # Further calling AE titles this upstream's C-STOREs for a relayed move (relay mode) and
    # its storage commitment results may come from (a PACS whose SCU has an AE title of its
    # own); ae_title always may.
    store_ae_titles: list[str] = []
    # The syntaxes this destination takes, in order of preference (UIDs or pydicom keywords):
    # an instance in another one is transcoded to the first the router can produce. Empty:
    # send as received, and transcode to Explicit/Implicit VR LE only if it refuses that.
    transfer_syntaxes: list[str] = []
    # As an upstream of storage commitment: how long an N-ACTION waits for its instances
    # still queued for this PACS (or a destination at its address) before it is relayed
    # (README "Storage commitment"); 0 relays at once. Below the 30-60 s most modalities
    # wait for the N-ACTION-RSP.
    commitment_hold: Seconds = Field(20.0, ge=0, le=3600)

    @field_validator("transfer_syntaxes")
    @classmethod
    def _syntax_uids(cls, value: list[str]) -> list[str]:
        return [_transfer_syntax_uid(v) for v in value]

    _ae = field_validator("ae_title", "calling_ae")(
        lambda v: None if v is None else _check_ae_title(v)
    )
    _host = field_validator("host", mode="before")(_not_blank("the destination's host name "
                                                              "or address"))
    _store_aes = field_validator("store_ae_titles")(
        lambda v: [_check_ae_title(t) for t in v])


class FolderDestination(DestinationBase):
    type: Literal["folder"]
    path: Path
    # fsync every file and directory entry: Success then means "on disk".
    fsync: bool = True

    _path = field_validator("path", mode="before")(_not_blank("the folder to write into"))


class DicomWebDestination(DestinationBase, DicomWebFields):
    """STOW-RS to a DICOMweb service (workers/destinations/dicomweb.py)."""


Destination = Annotated[DicomDestination | FolderDestination | DicomWebDestination,
                        Field(discriminator="type")]


class KnownAE(Strict):
    host: Host
    port: int = Field(ge=1, le=65535)
    tls: ClientTLS = ClientTLS()

    _host = field_validator("host", mode="before")(_not_blank("its host name or address"))


def _destination_type(destination: Any) -> Any:
    return destination.get("type") if isinstance(destination, dict) else \
        getattr(destination, "type", None)
