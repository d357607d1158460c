"""Small builders shared by the unit tests."""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any

import pytest

from router.core.messages import JobHeader

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def make_header(
    job_id: str = "job-1",
    destinations: tuple[str, ...] | list[str] = ("pacs",),
    *,
    size: int = 100,
    **overrides: Any,
) -> JobHeader:
    """A JobHeader with plausible defaults; any field can be overridden by keyword."""
    values: dict[str, Any] = {
        "job_id": job_id,
        "calling_ae": "CT1",
        "called_ae": "DICOM-ROUTER",
        "peer_address": "10.1.2.3",
        "peer_port": 40000,
        "sop_class_uid": CT_IMAGE_STORAGE,
        # One instance per job unless a test says otherwise: receptions of one instance are
        # kept in order per destination (router/broker/instance_order.py).
        "sop_instance_uid": f"1.2.3.4.{zlib.crc32(job_id.encode())}",
        "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
        "size": size,
        "received_at": 1_700_000_000.25,
        "rules": ("ct-from-scanner",),
        "destinations": tuple(destinations),
    }
    values.update(overrides)
    return JobHeader(**values)


def answer(dispatcher: Any, identity: bytes, result: Any, now: float) -> Any:
    """dispatcher.result() as a worker answers: with the token of the Deliver it got (0
    when that worker holds no such lease: a stranger's or a stale answer)."""
    lease = _lease(dispatcher, identity, (result.job_id, result.destination))
    return dispatcher.result(identity, dataclasses.replace(result, lease=lease), now)


def answer_batch(dispatcher: Any, identity: bytes, destination: str, results: list[Any],
                 now: float) -> Any:
    lease = _lease(dispatcher, identity, (results[0].job_id, destination)) if results else 0
    return dispatcher.batch_result(identity, destination, results, now, lease)


def _lease(dispatcher: Any, identity: bytes, key: tuple[str, str]) -> int:
    worker = dispatcher.workers.get(identity)
    delivery = worker.leases.get(key) if worker is not None else None
    return delivery.lease if delivery is not None else 0


def fail_fdatasync_once(monkeypatch: pytest.MonkeyPatch, code: int) -> list[int]:
    """The next os.fdatasync raises OSError(code) (a journal's group sync failing; the
    instances' own fsyncs still work) and the ones after succeed. The returned list holds
    the failed call's descriptor; clearing it arms one more failure."""
    real, failed = os.fdatasync, []

    def fdatasync(fd: int) -> None:
        if not failed:
            failed.append(fd)
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return failed
