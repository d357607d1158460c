"""The senders of an acceptor's relayed C-MOVEs, one per move destination.

A destination that serves one association at a time rejects a second one: two moves to it,
each with a sender of its own, competed, and every instance of the second failed. So the
moves to one destination in one acceptor share its sender (and so its association), taking
turns instance by instance under its lock; the sender is closed when the last of them ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from router.core.config import DicomDestination


@dataclass
class _Shared:
    sender: Any
    users: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class MoveSenders:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shared: dict[tuple[str, str], _Shared] = {}

    @contextmanager
    def use(self, name: str, config: DicomDestination, router_ae: str, tls_key: str = ""
            ) -> Iterator[tuple[Any, threading.Lock]]:
        """The destination's sender and the lock to hold around each send; keyed by its
        config too, so that a move after a reload uses the new one. `tls_key`: where its TLS
        settings are ("known_aes.VIEWER.tls"), for the messages."""
        key = (name, f"{router_ae} {config.model_dump_json()}")
        with self._lock:
            shared = self._shared.get(key)
            if shared is None:
                from router.dicom.store_sender import DicomDestination as Sender

                shared = self._shared[key] = _Shared(Sender(name, config, router_ae,
                                                            tls_key=tls_key,
                                                            retry_unusable_tls=False))
            shared.users += 1
        try:
            yield shared.sender, shared.lock
        finally:
            with self._lock:
                shared.users -= 1
                last = shared.users == 0
                if last:
                    del self._shared[key]
            if last:
                with shared.lock:
                    shared.sender.close()
