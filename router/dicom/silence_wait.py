"""A relayed request's wait for its upstream that counts silence, not the length of a message.

pynetdicom's blocking DIMSE wait (`get_msg(block=True)`) ends only once a whole message has
arrived, so `dimse_timeout` bounded how long one C-GET instance may take to arrive: a 2.3 GB
whole-slide image failed below about 38 MB/s at the default 60 s. Here the wait ends only
after `limit` seconds without a PDU from the upstream, and while PDUs keep coming it calls
`on_data` (at most once per PROGRESS_SECONDS) so that the acceptor, which counts its own
`request_timeout` as silence too, hears that the request is alive (RelayProgress).

A PDU is the unit: pynetdicom reads each one whole, so a link must carry one PDU (the
router's `max_pdu` for the upstream, 256 KB by default) per `limit`.

A relayed C-MOVE's upstream sends its instances on associations of its own, to an acceptor,
and nothing on the C-MOVE's association meanwhile: `elsewhere` says whether data for the
request arrived there since the last look (router/relay/move_registry.py ArrivalWatch),
which counts as a PDU from the upstream.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt

from router.dicom.net import wake_reader

SLICE_SECONDS = 0.25  # how often a waiting relay looks at the clock
PROGRESS_SECONDS = 1.0  # at most one RelayProgress a second per request


class SilenceWait:
    """Installed on an established association before its C-FIND, C-GET or C-MOVE."""

    def __init__(self, limit: float, on_data: Callable[[], None],
                 elsewhere: Callable[[], bool] | None = None) -> None:
        self.limit = limit
        self.on_data = on_data
        self.elsewhere = elsewhere
        self.last_pdu = self.reported = time.monotonic()
        # The router gave up on the upstream's silence. Shutting the socket down lets the DUL
        # thread see a closed connection, which can beat pynetdicom's own abort: its flags then
        # read as if the upstream had aborted, so the reason is kept here.
        self.gave_up = False

    def install(self, assoc: Any) -> None:
        assoc.bind(evt.EVT_PDU_RECV, self._pdu_received)
        dimse = assoc.dimse
        non_blocking = dimse.get_msg  # leave_responses_to_callers' (router/dicom/net.py)
        messages: queue.Queue[Any] = dimse.msg_queue

        def get_msg(block: bool = False) -> tuple[Any, Any]:
            if not block:
                return non_blocking(block)  # type: ignore[no-any-return]
            return self._wait(messages, assoc)

        dimse.get_msg = get_msg

    def _pdu_received(self, event: Any) -> None:
        """EVT_PDU_RECV, on the association's DUL thread."""
        self.last_pdu = time.monotonic()

    def _wait(self, messages: queue.Queue[Any], assoc: Any) -> tuple[Any, Any]:
        # Each wait starts its own count: time the router spent in a handler (a C-GET's
        # instance waiting for the acceptor's room) is not the upstream's silence.
        started = time.monotonic()
        while True:
            try:
                return messages.get(timeout=SLICE_SECONDS)  # type: ignore[no-any-return]
            except queue.Empty:
                pass
            now = time.monotonic()
            if self.elsewhere is not None and self.elsewhere():
                self.last_pdu = now
            if self.last_pdu > self.reported and now - self.reported >= PROGRESS_SECONDS:
                self.reported = now
                self.on_data()
            if now - max(started, self.last_pdu) > self.limit:
                self.gave_up = True
                wake_reader(assoc)
                return None, None  # pynetdicom aborts, as at its own DIMSE timeout

